"""The HTTP API: endpoints declared once (route, permission, types, OpenAPI), thin handlers
that decode, call the command side or a projection query, and encode; one error middleware."""
