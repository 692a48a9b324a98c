"""Shared fixtures: one embedded PostgreSQL and one SeaweedFS per session (started only
when a test asks for them), a fresh database per test."""

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.s3",
    "tests.fixtures.service",
    "tests.fixtures.processes",
]
