"""The agent lifecycle: pure decisions, and the reconciler that carries them out.

decisions.py (`step`: a snapshot and an event in, the next snapshot and actions out),
reconciler.py (events from the link and the clock, fed to `step`, effects applied),
deadlines.py (the schedule of check-in deadlines), presence.py (who went silent).
"""
