"""Rules: the expression language, metric history, selectors, templates and the engine
that turns balance rows into alert transitions. Knows nothing of HTTP or MQTT."""
