"""Board webhooks: outside systems post payloads that wake a board's agent.

rules.py (pure: signatures, retries, replays, the wake message), store.py (rows and
payloads), delivery.py (the worker that turns payloads into wakes), service.py (what
the API calls).
"""
