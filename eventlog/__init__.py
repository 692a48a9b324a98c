"""The event log: append (optimistic concurrency, group commit, global order, hash chain),
read, subscribe and verify, in PostgreSQL. Stores the domain's events; decides nothing."""
