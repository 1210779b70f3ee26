"""Alert receivers: MQTT and webhooks, each behind balwatch.sink.Sink."""
