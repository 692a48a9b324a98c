"""runsvc: an asynchronous, event-sourced run service. The rooms and their arrows are drawn
in docs/architecture.md."""
