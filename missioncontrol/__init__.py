"""Pieces shared by mc-hub and mc-sidecar: version, settings, logging, addresses."""
