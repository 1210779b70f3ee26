"""The durable outbox: alerts are committed to SQLite first, then delivered to each sink."""
