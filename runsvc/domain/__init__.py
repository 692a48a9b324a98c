"""The rules of a run, pure: its config, events, model and fold, timing, view, scheduler,
commands, validation and simulation. No I/O, no clock (`now` is a parameter), no drivers;
everything else imports this, it imports nothing of the service (docs/architecture.md)."""
