"""mc-hub: boards, agents, gateways and tasks; the link server; check-in reconciliation."""
