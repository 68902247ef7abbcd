"""Isolated, stateful Python sessions (Docker and bubblewrap backends)."""
