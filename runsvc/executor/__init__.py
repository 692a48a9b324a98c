"""The executor agent (`runsvc executor`): claims ready tasks from the service, runs each
attempt as a process group in its own work directory, streams its log, uploads its
artifacts and reports how it ended."""

from __future__ import annotations

from runsvc.executor.agent import Agent, AgentConfig, AgentError, AttemptEnd

__all__ = ["Agent", "AgentConfig", "AgentError", "AttemptEnd"]
