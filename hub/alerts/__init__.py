"""Alerts: rules that watch the event log and lasting conditions, and post signed
webhooks when they fire.

rules.py (pure: matching, cooldowns, payloads, URL checks), store.py (rules,
deliveries, attempts, cooldown state, the event cursor), service.py (what the API
calls, and the watcher), delivery.py (the sender).
"""
