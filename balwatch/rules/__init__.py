"""Rule language: expressions (expr), sample history (history)."""
