"""Heartbeats, alerts and the Telegram relay, the dashboard and metrics."""
