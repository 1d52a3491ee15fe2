"""The sidecar's side of the hub link.

client.py      the one outbound Link.Connect stream (LinkClient, LinkStatus)
backoff.py     reconnect pacing
heartbeats.py  agent heartbeats relayed to the hub: coalesced, batched, acknowledged
hub_calls.py   agent API calls forwarded to the hub and matched to their answers
enrollment.py  enrolling with the hub, and renewing the certificate on the link
identity.py    the link identity: key, client certificate, trusted hub CA
"""
