"""The Celery-free bottom layer: config, Redis keys and connection, client order ids, cycle records.

Everything here is importable by any layer (and by tools) without Celery; ``.importlinter`` holds
the contract that keeps it so.
"""
