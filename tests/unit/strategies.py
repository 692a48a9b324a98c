"""Hypothesis strategies: random run configs (DAGs with every feature of the model)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from runsvc.domain.config import RunConfig
from tests.unit.histories import config

CONDITIONS = ["success", "failure", "skipped"]


@st.composite
def run_configs(draw: st.DrawFn, max_tasks: int = 10) -> RunConfig:
    count = draw(st.integers(min_value=1, max_value=max_tasks))
    tasks: list[dict[str, Any]] = []
    for index in range(count):
        name = f"t{index}"
        parents = (
            draw(st.lists(st.sampled_from(range(index)), unique=True, max_size=3)) if index else []
        )
        depends: list[Any] = []
        for parent in parents:
            if draw(st.booleans()):
                depends.append(f"t{parent}")
            else:
                on = draw(
                    st.lists(st.sampled_from(CONDITIONS), min_size=1, max_size=3, unique=True)
                )
                depends.append({"task": f"t{parent}", "on": on})
        task: dict[str, Any] = {"name": name, "run": f"echo {name}", "depends": depends}
        if draw(st.integers(0, 4)) == 0:
            task["retry"] = {
                "max_attempts": draw(st.integers(1, 3)),
                "backoff": draw(st.sampled_from(["0s", "1s", "10s"])),
            }
        if draw(st.integers(0, 5)) == 0:
            task["continue_on_error"] = True
        if draw(st.integers(0, 6)) == 0:
            task["approval"] = True
        if draw(st.integers(0, 6)) == 0:
            task["when"] = {
                "env": "BRANCH",
                draw(st.sampled_from(["equals", "not_equals"])): "main",
            }
        if draw(st.integers(0, 5)) == 0:
            task["foreach"] = draw(
                st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=3)
            )
            task["foreach_strategy"] = draw(st.sampled_from(["parallel", "sequence"]))
            if draw(st.booleans()):
                task["max_parallel"] = draw(st.integers(1, 2))
        if draw(st.integers(0, 6)) == 0:
            task["timeout"] = "5m"
        if draw(st.integers(0, 6)) == 0:
            task["on_lost"] = "fail"
        if draw(st.integers(0, 4)) == 0:
            task["max_lost"] = draw(st.integers(1, 2))
        tasks.append(task)
    run: dict[str, Any] = {}
    if draw(st.integers(0, 3)) == 0:
        run["max_parallel"] = draw(st.integers(1, 3))
    if draw(st.integers(0, 6)) == 0:
        run["timeout"] = "30m"
    return config(*tasks, **run)
