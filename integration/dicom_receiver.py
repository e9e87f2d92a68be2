"""The DICOM receiver: C-ECHO and C-STORE of ECG waveforms into the durable queue.

Only Verification, 12-lead ECG Waveform Storage and General ECG Waveform Storage are
offered as presentation contexts, so any other SOP class is refused at association
negotiation. Calling AE titles are checked against the configured allow-list (the
association is rejected otherwise). Before accepting an object the free disk space
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
        if self.config.allowed_calling_aets:
            ae.require_calling_aet = list(self.config.allowed_calling_aets)
        ae.maximum_pdu_size = 0  # unlimited: ECG objects are small, let the peer choose
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        self._server = ae.start_server((self.config.host, self.config.port), block=False, evt_handlers=handlers)
        port = int(self._server.server_address[1])
        event("dicom.listening", logging.INFO, log, ae_title=self.config.ae_title, host=self.config.host, port=port,
              allowed_calling_aets=",".join(self.config.allowed_calling_aets) or "any")
        return port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_echo(self, ev: Any) -> int:
        event("dicom.echo", logging.INFO, log, calling_ae=ev.assoc.requestor.ae_title)
        return STATUS_SUCCESS

    def _on_rejected(self, ev: Any) -> None:
        event("dicom.association_rejected", logging.WARNING, log, calling_ae=ev.assoc.requestor.ae_title,
              reason="calling AE title not in dicom.allowed_calling_aets")

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
