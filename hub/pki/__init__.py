"""Trust for the link: the hub's CA, join tokens, enrollment, sealed secrets.

ca.py (the certificate authority), join_tokens.py (what a sidecar trades for its first
certificate), enrollment.py (issuing, renewing, revoking), secrets_box.py (secrets at rest).
"""
