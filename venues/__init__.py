"""Venue connectors (Backpack, Lighter), the order state machine and the local simulators. No Celery here."""
