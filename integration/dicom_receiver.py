"""The DICOM receiver: C-ECHO and C-STORE of ECG waveforms into the durable queue.

Only Verification, 12-lead ECG Waveform Storage and General ECG Waveform Storage are
offered as presentation contexts, so any other SOP class is refused at association
negotiation. Calling AE titles are checked against the configured allow-list and the
called AE title against ours (``dicom.require_called_aet``); the association is rejected
otherwise, and every rejection is logged with its reason. Associations are bounded:
``dicom.max_associations`` at once (more are rejected, local limit exceeded),
``dicom.max_associations_per_peer`` connections per IP address (more are closed before
any PDU is read), pynetdicom's network / ACSE / DIMSE timeouts, and a wall-clock
``dicom.association_deadline_s`` per connection that no trickle of bytes can extend
(pynetdicom's timers restart on every byte). Before accepting an object the free disk space
where the queue lives is checked: below the threshold the answer is 0xA700 (out of
resources) and the sender keeps the object for later.

A C-STORE is answered success (0x0000) only after the one intake
(:class:`lasan.integration.intake.Intake`) has read, validated and stored the object
durably, the same rule as the HL7 listener's AA. What remains here is the DICOM answer
table: a refusal's status comes from :func:`lasan.errors.protocol_answer` (A900 not an ECG
or leads missing, C000 unreadable, A700 not stored, C211 internal error), with the start
of the reason in the response's Error Comment. Handlers run in
pynetdicom's threads and never let an exception out.
"""

from __future__ import annotations

import logging
import shutil
import socket
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from lasan.integration.config import DicomConfig
from lasan.integration.intake import Accepted, Intake, Source
from lasan.integration.logs import event

__all__ = ["DicomReceiver", "STATUS_SUCCESS", "STATUS_OUT_OF_RESOURCES", "STATUS_CANNOT_UNDERSTAND",
           "STATUS_DATASET_MISMATCH", "STATUS_PROCESSING_FAILURE"]

log = logging.getLogger("lasan.integration.dicom")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700  # Refused: out of resources
STATUS_DATASET_MISMATCH = 0xA900  # Error: data set does not match SOP class
STATUS_CANNOT_UNDERSTAND = 0xC000  # Error: cannot understand
STATUS_PROCESSING_FAILURE = 0xC211  # pynetdicom's "unhandled exception in handler"


class DicomReceiver:
    """A pynetdicom storage SCP bound to the durable queue.

    Args:
        disk_path: where the queue lives: below ``config.min_free_disk_mb`` free there, C-STORE is refused.
    """

    def __init__(self, config: DicomConfig, intake: Intake, *, disk_path: Path) -> None:
        self.config, self.intake = config, intake
        self.metrics, self.health = intake.metrics, intake.health
        self._disk_path = disk_path
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Start the SCP in background threads; returns the bound port."""
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import time
            GeneralECGWaveformStorage,
            TwelveLeadECGWaveformStorage,
            Verification,
        )

        ae = AE(ae_title=self.config.ae_title)
        ae.add_supported_context(Verification)
        ae.add_supported_context(TwelveLeadECGWaveformStorage)
        ae.add_supported_context(GeneralECGWaveformStorage)
        c = self.config
        if c.allowed_calling_aets:
            ae.require_calling_aet = list(c.allowed_calling_aets)
        ae.require_called_aet = c.require_called_aet
        ae.maximum_associations = c.max_associations
        ae.network_timeout, ae.acse_timeout, ae.dimse_timeout = c.network_timeout_s, c.acse_timeout_s, c.dimse_timeout_s
        ae.maximum_pdu_size = 0  # unlimited: ECG objects are small, let the peer choose
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        # AE.start_server(block=False) with our server class: the same thread it would start.
        self._server = ae.make_server((c.host, c.port), evt_handlers=handlers, server_class=_bounded_server_class())
        self._server.lasan_config = c
        ae._servers.append(self._server)  # as start_server does: the server's shutdown() removes it there
        stamp = datetime.now().strftime("%Y%m%d%H%M%S")
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"AcceptorServer@{stamp}", daemon=True)
        self._thread.start()
        port = int(self._server.server_address[1])
        event("dicom.listening", logging.INFO, log, ae_title=c.ae_title, host=c.host, port=port,
              allowed_calling_aets=",".join(c.allowed_calling_aets) or "any", require_called_aet=c.require_called_aet,
              max_associations=c.max_associations, max_associations_per_peer=c.max_associations_per_peer,
              association_deadline_s=c.association_deadline_s)
        return port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()  # also closes the socket
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _on_echo(self, ev: Any) -> int:
        event("dicom.echo", logging.INFO, log, calling_ae=ev.assoc.requestor.ae_title)
        return STATUS_SUCCESS

    def _on_rejected(self, ev: Any) -> None:
        # pynetdicom's EVT_REJECTED carries no reason: redo its checks (acse.py, same order, last wins).
        assoc, c = ev.assoc, self.config
        calling = str(assoc.requestor.ae_title).strip()
        primitive = assoc.requestor.primitive
        called = str(getattr(primitive, "called_ae_title", "") or "").strip()
        reason = "rejected by pynetdicom (user identity or negotiation)"
        if c.allowed_calling_aets and calling not in c.allowed_calling_aets:
            reason = "calling AE title not in dicom.allowed_calling_aets"
        if c.require_called_aet and called != c.ae_title:
            reason = f"called AE title is not ours ({c.ae_title}); dicom.require_called_aet is on"
        if sum(1 for a in assoc.ae.active_associations if a.is_acceptor) > c.max_associations:
            reason = f"dicom.max_associations ({c.max_associations}) associations are open (local limit exceeded)"
        event("dicom.association_rejected", logging.WARNING, log, calling_ae=calling, called_ae=called,
              peer=_address(assoc.requestor.address, assoc.requestor.port), reason=reason)

    def free_disk_mb(self) -> float:
        path = self._disk_path
        while not path.exists() and path != path.parent:
            path = path.parent
        return shutil.disk_usage(path).free / 1e6

    def _on_store(self, ev: Any) -> Any:
        calling = str(ev.assoc.requestor.ae_title).strip()
        comment = ""
        try:
            status, comment = self._store(ev, calling)
        except Exception as exc:  # noqa: BLE001 - STYLE rule 6: a failure status, never a dead SCP
            event("dicom.handler_bug", logging.ERROR, log, calling_ae=calling, exc_type=type(exc).__name__)
            self.health.error(f"dicom: {type(exc).__name__}")
            status = STATUS_PROCESSING_FAILURE
        self.metrics.acks.labels(f"dicom_{status:04X}").inc()
        if not comment:
            return status
        from pydicom import Dataset

        # The reason goes back in the response's Error Comment (LO: 64 characters at most).
        answer = Dataset()
        answer.Status = status
        answer.ErrorComment = comment[:64]
        return answer

    def _store(self, ev: Any, calling: str) -> tuple[int, str]:
        free = self.free_disk_mb()
        if free < self.config.min_free_disk_mb:
            event("dicom.store_refused", logging.WARNING, log, calling_ae=calling, status="A700",
                  reason=f"free disk {free:.0f} MB below dicom.min_free_disk_mb {self.config.min_free_disk_mb:g}")
            self.health.error("dicom: disk space low, C-STORE refused")
            self.metrics.received.labels("dicom").inc()
            return STATUS_OUT_OF_RESOURCES, "disk space low at the receiver; send again later"
        sop_uid = str(ev.request.AffectedSOPInstanceUID or "")
        source = Source("dicom", formats=("dicom",), suffix=".dcm", sender=calling, control_id=sop_uid)
        outcome = self.intake.accept(bytes(ev.encoded_dataset()), source)
        if isinstance(outcome, Accepted):
            record = outcome.parsed.record if outcome.parsed else None
            event("dicom.stored", logging.INFO, log, calling_ae=calling, sop_instance=sop_uid, item=outcome.item_id,
                  duplicate=outcome.duplicate, leads=len(record.leads) if record else None,
                  fs=record.fs if record else None)
            return STATUS_SUCCESS, ""
        status = outcome.answer.dicom_status
        event("dicom.store_rejected", logging.WARNING, log, calling_ae=calling, sop_instance=sop_uid,
              status=f"{status:04X}", reason=outcome.reason, error=type(outcome.error).__name__)
        return status, outcome.reason


def _address(host: Any, port: Any) -> str:
    return f"{host}:{port}"


def _bounded_server_class() -> type:
    """pynetdicom's threaded server with a per-peer connection limit and a wall-clock deadline.

    Built on first use so that importing this module does not import pynetdicom.
    """
    from pynetdicom.transport import ThreadedAssociationServer

    class BoundedAssociationServer(ThreadedAssociationServer):
        lasan_config: DicomConfig

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._per_peer: dict[str, int] = {}
            self._peer_lock = threading.Lock()

        def verify_request(self, request: Any, client_address: Any) -> bool:
            # socketserver closes the socket when this returns False: before any PDU is read.
            ip, limit = str(client_address[0]), self.lasan_config.max_associations_per_peer
            with self._peer_lock:
                if self._per_peer.get(ip, 0) >= limit:
                    refused = True
                else:
                    self._per_peer[ip] = self._per_peer.get(ip, 0) + 1
                    refused = False
            if refused:
                event("dicom.connection_refused", logging.WARNING, log, peer=_address(*client_address[:2]),
                      reason=f"dicom.max_associations_per_peer ({limit}) connections are open from this address")
            return not refused

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            # pynetdicom's handler only starts the association's own thread and returns: this
            # thread then waits for that association, so the peer's slot lasts as long as it
            # does, and cuts it at the deadline (pynetdicom's timers restart on every byte).
            deadline = self.lasan_config.association_deadline_s
            started = time.monotonic()
            try:
                super().process_request_thread(request, client_address)
                assoc = next((a for a in self.active_associations
                              if getattr(getattr(a.dul, "socket", None), "socket", None) is request), None)
                if assoc is not None:
                    assoc.join(max(0.0, deadline - (time.monotonic() - started)))
                    if assoc.is_alive():
                        event("dicom.association_deadline", logging.WARNING, log, peer=_address(*client_address[:2]),
                              reason=f"connection open longer than dicom.association_deadline_s ({deadline:g} s); closed")
                        try:
                            request.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                        assoc.join(1.0)
                        if assoc.is_alive():
                            assoc.kill()
            finally:
                with self._peer_lock:
                    ip = str(client_address[0])
                    left = self._per_peer.get(ip, 0) - 1
                    if left > 0:
                        self._per_peer[ip] = left
                    else:
                        self._per_peer.pop(ip, None)

    return BoundedAssociationServer
