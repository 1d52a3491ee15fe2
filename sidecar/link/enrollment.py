"""Enrolling this sidecar with the hub, and renewing its certificate over the link.

Enroll: make a key and CSR locally, pin the hub by its CA fingerprint (from the
join string or --ca-fingerprint), call Enroll over server-authenticated TLS,
store key, certificate and CA with strict permissions, and remember the hub's
link address so `mc-sidecar run` needs no --hub. Nothing is written unless the
hub accepted the token.

Renew: at a random point in 70-90 % of the certificate's lifetime, send a new
CSR on the established link; the new certificate is used from the next
connection, so the current stream (and its heartbeats) is not interrupted.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from missioncontrol.log import get_logger
from missioncontrol.netaddr import HostPort
from missioncontrol.pki import JoinString
from missioncontrol.private_files import write_file_atomic
from missioncontrol.tasks import start_long_lived
from protos import link_pb2 as pb
from protos import link_pb2_grpc as pb_grpc
from sidecar.link.identity import (
    Identity,
    IdentityError,
    check_can_enroll,
    enroll_channel_credentials,
    load_identity,
    new_key_request,
    renewal_due_at,
    save_identity,
)

log = get_logger("sidecar.enrollment")

HUB_LINK_FILE = "hub-link"
ENROLL_TIMEOUT_S = 30.0


class EnrollmentError(Exception):
    """Enrollment was refused or failed; nothing was written."""


@dataclass(frozen=True)
class Enrolled:
    gateway_id: str
    link: HostPort
    not_after: dt.datetime


def read_hub_link(state_dir: Path) -> HostPort | None:
    path = state_dir / HUB_LINK_FILE
    return HostPort.parse(path.read_text()) if path.exists() else None


async def enroll(
    hub: HostPort,
    join: str,
    state_dir: Path,
    *,
    ca_fingerprint: str | None = None,
    gateway_id: str | None = None,
    force: bool = False,
) -> Enrolled:
    try:
        check_can_enroll(state_dir, force=force)
        if "@" in join:
            parsed = JoinString.parse(join)
            token, pin = parsed.token, ca_fingerprint or parsed.ca_fingerprint
        else:
            token, pin = join.strip(), ca_fingerprint
        if not pin:
            raise EnrollmentError(
                "no CA fingerprint to pin the hub with: pass the whole join string "
                "(id.secret@sha256:...) or --ca-fingerprint SHA256"
            )
        credentials, ca_pem = await enroll_channel_credentials(hub, pin)
    except (IdentityError, ValueError) as exc:
        raise EnrollmentError(str(exc)) from None
    request = new_key_request(socket.gethostname())
    async with grpc.aio.secure_channel(str(hub), credentials) as channel:
        try:
            response: pb.EnrollResponse = await pb_grpc.EnrollmentStub(channel).Enroll(
                pb.EnrollRequest(
                    join_token=token,
                    csr_pem=request.csr_pem,
                    hostname=socket.gethostname(),
                    gateway_id=gateway_id or "",
                ),
                timeout=ENROLL_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as exc:
            raise EnrollmentError(f"the hub refused enrollment: {exc.details()}") from None
    save_identity(state_dir, request.key_pem, response.certificate_pem, ca_pem)
    link = HostPort(hub.host, response.link_port)
    write_file_atomic(state_dir / HUB_LINK_FILE, f"{link}\n".encode(), 0o600)
    identity = load_identity(state_dir)
    log.info(
        "sidecar.enrolled",
        gateway_id=response.gateway_id,
        link=str(link),
        not_after=identity.not_after.isoformat(),
    )
    return Enrolled(response.gateway_id, link, identity.not_after)


class CertificateRenewal:
    """Renews the link certificate before it expires, over the link itself."""

    def __init__(
        self,
        state_dir: Path,
        send: Callable[[pb.SidecarMessage], None],
        *,
        rng: random.Random | None = None,
        min_interval_s: float = 60.0,
    ) -> None:
        self.state_dir = state_dir
        self.send = send
        self.rng = rng or random.Random()
        # A floor between renewals: a skewed clock must not turn into a renewal storm.
        self.min_interval_s = min_interval_s
        self.identity: Identity = load_identity(state_dir)
        self._pending_key: bytes | None = None
        self._renewed = asyncio.Event()

    def credentials(self) -> grpc.ChannelCredentials:
        """Credentials for the next connection (picks up a renewed certificate)."""
        return self.identity.channel_credentials()

    def on_response(self, response: pb.RenewResponse) -> None:
        try:
            if response.error or self._pending_key is None:
                log.error("link.certificate.renew_failed", error=response.error or "unexpected")
                return
            try:
                save_identity(
                    self.state_dir,
                    self._pending_key,
                    response.certificate_pem,
                    self.identity.ca_bundle_pem,
                )
                self.identity = load_identity(self.state_dir)
            except (OSError, ValueError, IdentityError) as exc:
                # The current certificate stays in use; the next attempt tries again.
                log.error(
                    "link.certificate.renew_failed",
                    error=f"the renewed certificate could not be stored: {exc}",
                )
                return
            self._pending_key = None
            log.info("link.certificate.renewed", not_after=self.identity.not_after.isoformat())
        finally:
            self._renewed.set()

    def start(self) -> asyncio.Task[None]:
        return start_long_lived(self.run(), name="sidecar-renewal", log=log)

    async def run(self) -> None:
        first = True
        while True:
            try:
                due = renewal_due_at(self.identity.certificate, self.rng)
                wait_s = (due - dt.datetime.now(dt.UTC)).total_seconds()
            except (IdentityError, ValueError) as exc:
                # Expired: only `mc-sidecar enroll --force` helps; say so now and then.
                log.error("link.certificate.renew_failed", error=str(exc))
                wait_s = self.min_interval_s
            await asyncio.sleep(max(wait_s, 0.0 if first else self.min_interval_s))
            first = False
            try:
                await self._renew_once()
            except Exception as exc:  # one failed attempt must not end renewals
                log.exception("link.certificate.renew_failed", error=repr(exc))

    async def _renew_once(self) -> None:
        request = new_key_request(socket.gethostname())
        self._pending_key = request.key_pem
        self._renewed.clear()
        self.send(pb.SidecarMessage(renew=pb.RenewRequest(csr_pem=request.csr_pem)))
        try:
            async with asyncio.timeout(300):
                await self._renewed.wait()
        except TimeoutError:
            log.warning("link.certificate.renew_timeout")
