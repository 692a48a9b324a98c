"""The command side: loads runs, lets the domain decide, appends to the log, and keeps the
state that must be decided across runs beside it (counters, keys, slots, leases, claims,
tokens, log chunks). Each module holds the SQL of its own tables."""
