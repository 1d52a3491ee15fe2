"""What admins ask of agents, and the files and commands that carry it to the gateway.

service.py (create, re-apply, rotate a token, delete), agents.py (agent rows and the
commands that provision them), rendering.py (workspace files from templates/),
template_sync.py (re-apply a gateway's agents as a job), agent_tokens.py (minting and
checking agent tokens).
"""
