"""The hub end of the link: one gRPC stream per sidecar.

server.py (Link.Connect, sessions and the registry), peer.py (who the mTLS peer is),
queries.py (live reads of a gateway through its stream), agent_calls.py (agent API
calls sidecars forward).
"""
