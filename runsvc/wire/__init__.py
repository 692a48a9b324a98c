"""The wire contract: every request and response type of the HTTP API (`api`) and of the
executor protocol (`executor`). Needs msgspec and the domain alone, so a client carries no
server code."""
