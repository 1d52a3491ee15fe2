"""The dashboard: server-rendered pages on the hub's HTTP port (`/`, `/ui/...`).

dashboard.py mounts it (middleware: security headers, sessions, CSRF); views.py has the
pages, actions.py the forms, reads.py what each page reads (through the domain
modules' `*_in(conn)` functions), live.py the event stream, trends.py and charts.py
the trends, timeline.py and files.py an agent's history and workspace files,
seams.py the places later work fills in. templates/ and static/ ship in the package.
"""
