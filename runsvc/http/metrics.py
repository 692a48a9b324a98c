"""Prometheus metrics: request counts and latencies by route, plus gauges read from the
running components at scrape time (events appended, projection lag, subscribers, snapshot
age). Each application has its own registry, so tests can run many apps in one process."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "runsvc_http_requests_total",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "runsvc_http_request_duration_seconds",
            "HTTP request latency by route.",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)


Reading = Callable[[], float | None]


class ComponentCollector(Collector):
    """Gauges and counters whose values live in the running components; each source is a
    callable registered when its component starts (None means "not running")."""

    def __init__(self) -> None:
        self.gauges: dict[str, tuple[str, Reading]] = {}
        self.counters: dict[str, tuple[str, Reading]] = {}
        self.labelled: dict[str, tuple[str, str, Callable[[], dict[str, float]]]] = {}
        self.labelled_counters: dict[str, tuple[str, str, Callable[[], dict[str, float]]]] = {}

    def collect(self) -> Iterator[Metric]:
        for name, (doc, read) in self.gauges.items():
            value = read()
            if value is not None:
                family = GaugeMetricFamily(name, doc)
                family.add_metric([], value)
                yield family
        for name, (doc, read) in self.counters.items():
            value = read()
            if value is not None:
                counter = CounterMetricFamily(name, doc)
                counter.add_metric([], value)
                yield counter
        for name, (doc, label, read_all) in self.labelled.items():
            family = GaugeMetricFamily(name, doc, labels=[label])
            for key, value in read_all().items():
                family.add_metric([key], value)
            yield family
        for name, (doc, label, read_all) in self.labelled_counters.items():
            counted = CounterMetricFamily(name, doc, labels=[label])
            for key, value in read_all().items():
                counted.add_metric([key], value)
            yield counted


class Metrics:
    """All of one application's metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http = HttpMetrics(self.registry)
        self.components = ComponentCollector()
        self.registry.register(self.components)

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = web.AppKey("metrics", Metrics)


async def metrics_handler(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[METRICS].render(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )
