"""The demo: the whole system on one machine (`mc-hub demo`, `make demo`).

- `runner`: starts and stops the processes, creates a board with a lead and a worker.
- `openclaw_install` (with `install_openclaw.sh`): a real OpenClaw gateway from npm,
  cached; the interop tests install through it too.
- `scripted_model`: an OpenAI-compatible model on loopback that answers agent runs by
  script, so real runs happen without a model provider (`python -m hub.demo model`).
"""
