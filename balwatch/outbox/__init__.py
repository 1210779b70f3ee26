"""The durable outbox: alerts are committed to the state store first, then delivered to each
sink (:mod:`balwatch.outbox.worker`)."""
