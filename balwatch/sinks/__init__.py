"""Alert receivers: MQTT and webhooks, each behind balwatch.sinks.base.Sink."""
