"""Prices: every balance row valued in USD (``prices:`` in config)."""
