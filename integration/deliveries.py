"""The extra result targets of a scored ECG (PACS, FHIR): what is stored, and how it is sent.

:func:`build_deliveries` runs once, when the scoring stage stores a result: it turns the
parsed record and its score into one payload per configured target, and the queue stores
them in the same transaction as the HL7 result (``mark_scored(..., deliveries=...)``).
:func:`send_delivery` sends one stored payload; the
:class:`~lasan.integration.stages.DeliveryStage` retries it with backoff until it is
delivered. Because the payload is stored, every retry sends the very same bytes: the same
SOP Instance UIDs to PACS and the same Bundle (with conditional creates) to FHIR.

* ``pacs``: the Comprehensive SR and the Encapsulated PDF (:mod:`.pacs`), sent over one
  association by C-STORE (:mod:`.dicom_scu`).
* ``fhir``: the R4 transaction Bundle (:mod:`.fhir`) as JSON, written to the outbox as
  ``<result MSH-10>.fhir.json`` on every attempt and POSTed when ``fhir.base_url`` is set.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from lasan.errors import DeliveryError, IntegrationError
from lasan.hl7.result import result_control_id
from lasan.integration.config import AppConfig
from lasan.integration.logs import event
from lasan.integration.queue import Delivery, IdempotencyKey

if TYPE_CHECKING:
    from lasan.client.score import Score
    from lasan.hl7.oru import OrderContext
    from lasan.record import ECGRecord

__all__ = ["PACS", "FHIR", "targets", "wants_pdf", "build_deliveries", "send_delivery"]

PACS, FHIR = "pacs", "fhir"

log = logging.getLogger("lasan.integration.worker")


def targets(config: AppConfig) -> tuple[str, ...]:
    """The extra targets this configuration delivers to."""
    return tuple(name for name, on in ((PACS, config.pacs is not None), (FHIR, config.fhir is not None)) if on)


def wants_pdf(config: AppConfig) -> bool:
    """Whether a PDF report must be rendered: for the ORU (scoring.pdf_report) or for PACS."""
    return config.scoring.pdf_report or config.pacs is not None


def _uid_key(key: IdempotencyKey) -> str:
    return f"{key.sender_app}|{key.sender_facility}|{key.control_id}"


def build_deliveries(config: AppConfig, record: ECGRecord, order: OrderContext | None, score: Score, *,
                     key: IdempotencyKey, pdf: bytes | None) -> dict[str, bytes]:
    """One payload per configured target for a scored ECG (empty when none is configured).

    A target whose payload cannot be built (a LASAN bug, logged as ``worker.delivery_unbuildable``)
    is left out, so that the HL7 result is still stored and sent.
    """
    out: dict[str, bytes] = {}
    point = config.scoring.thresholds_mode
    if config.pacs is not None:
        from lasan.integration.pacs import pack_objects, pacs_objects

        try:
            out[PACS] = pack_objects(pacs_objects(record, score, uid_key=_uid_key(key), order=order, pdf=pdf,
                                                  operating_point=point))
        except IntegrationError as exc:
            event("worker.delivery_unbuildable", logging.ERROR, log, target=PACS, error=str(exc), key=str(key))
    if config.fhir is not None:
        from lasan.integration.fhir import report_bundle

        try:
            bundle = report_bundle(score, record, operating_point=point, identifier=_result_id(key))
            out[FHIR] = json.dumps(bundle, separators=(",", ":")).encode("utf-8")
        except IntegrationError as exc:
            event("worker.delivery_unbuildable", logging.ERROR, log, target=FHIR, error=str(exc), key=str(key))
    return out


def _result_id(key: IdempotencyKey) -> str:
    return result_control_id(key.sender_app, key.sender_facility, key.control_id)


def send_delivery(config: AppConfig, delivery: Delivery, *, target_down: str | None = None) -> str:
    """Send one stored payload (blocking: run it in a thread); returns what was done, for the log.

    ``target_down``: the error a delivery to the same target just got in this round; then only
    the local part is done (the FHIR outbox file) and the remote one is not tried again now.

    Raises:
        DeliveryError: the target is down, refused it, or is no longer configured; retry later.
    """
    if delivery.target == PACS:
        if config.pacs is None:
            raise DeliveryError("a PACS delivery is queued but the pacs: section is gone from the configuration; "
                                "restore it to send the stored objects")
        if target_down is not None:
            raise DeliveryError(f"not tried: {target_down}")
        from lasan.integration.dicom_scu import store
        from lasan.integration.pacs import unpack_objects

        try:
            objects = unpack_objects(delivery.payload)
        except IntegrationError as exc:
            raise DeliveryError(str(exc)) from exc
        report = store(objects, config.pacs)
        return f"{len(report.statuses)} object(s) stored at {config.pacs.called_ae}@{config.pacs.host}:{config.pacs.port}"
    if delivery.target == FHIR:
        if config.fhir is None:
            raise DeliveryError("a FHIR delivery is queued but the fhir: section is gone from the configuration; "
                                "restore it to send the stored bundle")
        from lasan.integration.fhir import post_bundle, write_bundle

        try:
            bundle = json.loads(delivery.payload)
            write_bundle(bundle, config.storage.outbox, _result_id(delivery.key))
        except (ValueError, OSError) as exc:
            raise DeliveryError(f"cannot write the FHIR bundle to the outbox {config.storage.outbox}: {exc}") from exc
        if config.fhir.base_url is None:
            return "bundle written to the outbox"
        if target_down is not None:
            raise DeliveryError(f"bundle written to the outbox; POST not tried: {target_down}")
        status = post_bundle(config.fhir.base_url, bundle, timeout_s=config.fhir.timeout_s)
        return f"bundle written to the outbox and POSTed (HTTP {status})"
    raise DeliveryError(f"unknown delivery target {delivery.target!r}; this LASAN version sends to pacs and fhir")
