"""C-STORE SCU: send DICOM result objects to a PACS (pynetdicom), one association per delivery.

Blocking (pynetdicom's association API is synchronous): the worker calls :func:`store`
through ``asyncio.to_thread``. Every way a store can fail (PACS down, association rejected
or aborted, a failure status) raises :class:`~lasan.errors.DeliveryError`; the caller keeps
the objects queued and retries with backoff. A warning status (0xB000, 0xB006, 0xB007)
counts as stored: the PACS kept the object.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from lasan.errors import DeliveryError
from lasan.integration.config import PacsConfig, client_ssl_context

__all__ = ["StoreReport", "store"]

# Warnings that still mean "stored" (PS3.4 Table GG.4-1: coercion, elements discarded, dataset mismatch).
_STORED_WARNINGS = frozenset({0xB000, 0xB006, 0xB007})
_TRANSFER_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")  # explicit, implicit VR little endian


@dataclass(frozen=True)
class StoreReport:
    """What the PACS answered: one (SOP Instance UID, status) per object, in sending order."""

    statuses: tuple[tuple[str, int], ...]


def store(objects: Sequence[bytes], pacs: PacsConfig) -> StoreReport:
    """Send DICOM Part 10 files to ``pacs`` over one association; every object must be stored.

    Raises:
        DeliveryError: the PACS is unreachable, rejected or aborted the association, or
            refused an object (the status is named); nothing is lost, the caller retries.
    """
    import pydicom
    from pynetdicom import AE

    datasets = [pydicom.dcmread(io.BytesIO(blob)) for blob in objects]
    ae = AE(ae_title=pacs.calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = pacs.timeout_s
    ae.connection_timeout = pacs.timeout_s
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, list(_TRANSFER_SYNTAXES))
    where = f"the PACS {pacs.called_ae} at {pacs.host}:{pacs.port}"
    tls_args = (client_ssl_context(pacs.tls, "pacs.tls"), pacs.host) if pacs.tls is not None else None
    # pynetdicom logs every PDU at INFO/DEBUG; what matters is reported by the caller.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    try:
        assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.called_ae, tls_args=tls_args)
    except (OSError, RuntimeError) as exc:
        raise DeliveryError(f"{where} could not be reached ({exc}); the objects stay queued and are retried") from exc
    if not assoc.is_established:
        names = ", ".join(sorted({ds.SOPClassUID.name for ds in datasets}))
        why = ("rejected the association" if assoc.is_rejected else
               f"did not open an association (down, wrong host/port, TLS mismatch, or it accepts none of: {names})")
        ae.shutdown()
        raise DeliveryError(f"{where} {why}; check pacs.host/port/called_ae/calling_ae. "
                            "The objects stay queued and are retried")
    statuses: list[tuple[str, int]] = []
    try:
        for ds in datasets:
            try:
                status = assoc.send_c_store(ds)
            except (ValueError, RuntimeError) as exc:  # pynetdicom: no accepted presentation context
                raise DeliveryError(f"{where} does not accept {ds.SOPClassUID.name} ({exc}); configure the PACS "
                                    "to store this SOP class; retried") from exc
            code = int(status.Status) if status and "Status" in status else None
            if code is None:
                raise DeliveryError(f"{where} gave no answer to the C-STORE of {ds.SOPClassUID.name} "
                                    "(association aborted or timed out); retried")
            if code != 0x0000 and code not in _STORED_WARNINGS:
                raise DeliveryError(f"{where} refused the {ds.SOPClassUID.name} with status 0x{code:04X}; "
                                    "check the PACS log; retried")
            statuses.append((str(ds.SOPInstanceUID), code))
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    return StoreReport(tuple(statuses))
