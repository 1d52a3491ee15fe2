"""mc-sidecar: runs beside one OpenClaw gateway and links it to the hub."""
