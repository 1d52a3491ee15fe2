"""The hub's store: one SQLite database behind a group-committing writer.

database.py (the writer, commit notices), migrations.py (the schema), errors.py (what a
refusal is), event_log.py (what happened), outbox.py (each gateway's numbered commands),
gateways.py (gateway rows, links, enrollment records).
"""
