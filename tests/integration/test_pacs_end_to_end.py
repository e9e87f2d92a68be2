"""``lasan listen`` end to end with results to PACS and FHIR: ECGs in by MLLP and by DICOM C-STORE,
scored by a real Triton, their SR and encapsulated PDF stored at a real dcmtk storescp that is
down at first, their FHIR Bundles POSTed to a local FHIR server; each exactly once, no PHI logged."""

from __future__ import annotations

import asyncio
import io
import time

import pytest
from dicom_pacs import FhirServer, StoreSCP, dciodvfy_errors, free_port
from feedkit import PHI, oru, small_ecg

from lasan.formats.dicom import dicom_bytes
from lasan.hl7.ack import parse_ack
from lasan.integration.config import PacsConfig
from lasan.integration.dicom_scu import store
from lasan.integration.mllp import MLLPClient
from lasan.integration.pacs import COMPREHENSIVE_SR, ENCAPSULATED_PDF

pytestmark = pytest.mark.slow


def _send_hl7(port: int, messages: dict[str, bytes]) -> dict[str, str]:
    async def main() -> dict[str, str]:
        async with MLLPClient("127.0.0.1", port, timeout_s=20) as client:
            return {cid: parse_ack(await client.send(msg)).code for cid, msg in messages.items()}

    return asyncio.run(main())


def test_listen_sends_sr_and_pdf_to_a_pacs_that_comes_up_late_and_fhir_bundles(
        triton_server, downstream, listener_process, assert_no_phi, tmp_path):
    import highdicom as hd
    import pydicom

    pacs = StoreSCP(tmp_path / "pacs", ae_title="PACS", port=free_port())  # down until started below
    fhir = FhirServer()
    fhir.status = 201
    dicom_port = free_port()
    lp = listener_process(triton_server.grpc_url, downstream.port,
                          dicom={"enabled": True, "port": dicom_port, "ae_title": "LASAN"},
                          pacs=pacs.config_section(timeout_s=3.0), fhir={"base_url": fhir.url},
                          retry={"initial_s": 0.1, "max_s": 0.5}).start()
    try:
        assert _send_hl7(lp.hl7_port, {f"E2E-{n}": oru(small_ecg(seed=n), f"E2E-{n}") for n in (1, 2)}) == \
            {"E2E-1": "AA", "E2E-2": "AA"}
        source = pydicom.dcmread(io.BytesIO(dicom_bytes(small_ecg(seed=3), uid_key="e2e-dicom")))
        receiver = PacsConfig(host="127.0.0.1", port=dicom_port, called_ae="LASAN", calling_ae="MODALITY",
                              timeout_s=10.0)
        deadline = time.monotonic() + 30
        while True:  # the DICOM receiver may open its port a moment after the MLLP listener
            try:
                store([dicom_bytes(small_ecg(seed=3), uid_key="e2e-dicom")], receiver)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        downstream.wait_for({"E2E-1", "E2E-2", str(source.SOPInstanceUID)}, timeout=120)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(fhir.accepted) < 3:
            time.sleep(0.2)
        assert len(fhir.accepted) == 3
        time.sleep(1.5)  # several delivery rounds fail while the PACS is down
        assert pacs.received() == []
        pacs.start()
        files = pacs.wait_for(6, timeout_s=60)
        time.sleep(2.0)  # more rounds: nothing arrives twice
        files = pacs.received()
    finally:
        pacs.stop()
        lp.terminate()
        fhir.close()
    arrived = [pydicom.dcmread(path) for path in files]
    assert len(arrived) == 6 and len({str(ds.SOPInstanceUID) for ds in arrived}) == 6
    assert sorted(str(ds.SOPClassUID) for ds in arrived) == sorted([COMPREHENSIVE_SR, ENCAPSULATED_PDF] * 3)
    for path in files:
        assert dciodvfy_errors(path) == [], path.name
    by_study: dict[str, list] = {}
    for ds in arrived:
        by_study.setdefault(str(ds.StudyInstanceUID), []).append(ds)
    assert len(by_study) == 3 and all(len(v) == 2 for v in by_study.values())  # one SR + one PDF per ECG
    (in_source_study,) = [v for k, v in by_study.items() if k == str(source.StudyInstanceUID)]
    (sr,) = [ds for ds in in_source_study if ds.SOPClassUID == COMPREHENSIVE_SR]
    ref = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    for ds in arrived:
        if ds.SOPClassUID == COMPREHENSIVE_SR:
            groups = hd.sr.ComprehensiveSR.from_dataset(ds).content.get_image_measurement_groups()
            probs = {m.name.value: m.value for m in groups[0].get_measurements() if m.name.value.startswith("P-")}
            assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
        else:
            assert ds.EncapsulatedDocument.startswith(b"%PDF-")
        assert ds.PatientID == PHI.patient_id  # the HL7 PID and the DICOM patient module carried it
    outbox = lp.work / "outbox"
    assert len(list(outbox.glob("*.fhir.json"))) == 3 and len(list(outbox.glob("*.hl7"))) == 3
    assert_no_phi(lp.log_text())
