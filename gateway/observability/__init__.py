"""Observability: request metrics in node memory and the /metrics exporter, the access log,
alert webhooks, the /status + /dashboard pages and tracing (see each module)."""
