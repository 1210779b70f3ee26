"""balwatch: balance alerting for exchange and custody accounts."""

__version__ = "0.1.0"
