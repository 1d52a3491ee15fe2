"""The hub's store: one database behind a group-committing writer, SQLite or PostgreSQL.

database.py (the writer, commit notices, the SQLite engine), postgres.py (the PostgreSQL
engine), dialect.py (the SQLite-dialect queries as PostgreSQL reads them), engines.py
(which engine a --database URL names), migrations.py (the schema), errors.py (what a
refusal is), event_log.py (what happened), outbox.py (each gateway's numbered commands),
gateways.py (gateway rows, links, enrollment records).
"""
