"""PACS and FHIR deliveries from the durable queue: a PACS (real dcmtk storescp) and a FHIR
server (a real local HTTP server) that are down at first get every result once they are up,
exactly once per ECG, with the SOP Instance UIDs and the Bundle stored when it was scored."""

from __future__ import annotations

import asyncio
import io
import json
import time

import pytest
from dicom_pacs import FhirServer, StoreSCP, dciodvfy_errors, free_port

from lasan.client.score import Score
from lasan.formats.dicom import dicom_bytes, read_dicom
from lasan.formats.sample import sample_ecg
from lasan.hl7.result import order_from_dicom, result_control_id
from lasan.integration.config import config_from_dict
from lasan.integration.deliveries import FHIR, PACS, build_deliveries
from lasan.integration.metrics import Health, Metrics
from lasan.integration.pacs import COMPREHENSIVE_SR, ENCAPSULATED_PDF, unpack_objects
from lasan.integration.queue import IdempotencyKey, open_queue
from lasan.integration.stages import Bookkeeping, DeliveryStage
from lasan.leads import MODEL_LEADS

_PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj 2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n%%EOF\n"


def _score(p_arvc: float) -> Score:
    importance = dict(zip(MODEL_LEADS, (0.3, 0.1, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05), strict=True))
    return Score(
        probabilities={"control": 0.9 - p_arvc, "ARVC": p_arvc, "LQTS": 0.1}, predicted_class="ARVC",
        screening={"ARVC": True, "LQTS": False}, confirmation={"ARVC": False, "LQTS": False},
        thresholds={"screening": {"ARVC": 0.3, "LQTS": 0.4}, "confirmation": {"ARVC": 0.8, "LQTS": 0.9}},
        lead_importance=importance, model_name="lasan_ensemble", model_version="1-abc", round_trip_ms=3.0,
    )


@pytest.fixture
def fhir_server():
    server = FhirServer()
    yield server
    server.close()  # closing twice is fine


def test_pacs_and_fhir_down_then_up_each_object_arrives_exactly_once(tmp_path, fhir_server):
    import pydicom

    pacs = StoreSCP(tmp_path / "pacs", ae_title="PACS", port=free_port())  # not started: the PACS is down
    config = config_from_dict({
        "storage": {"queue_db": "q.sqlite", "outbox": "outbox"},
        "retry": {"initial_s": 0.05, "max_s": 0.2},
        "pacs": pacs.config_section(timeout_s=3.0),
        "fhir": {"base_url": fhir_server.url, "timeout_s": 3.0},
    }, tmp_path)
    queue = open_queue(config.storage)
    metrics = Metrics()
    stage = DeliveryStage(config, Bookkeeping(config, queue, metrics, Health()))

    # Two scored ECGs, stored as the scoring stage stores them: one DICOM (its own study), one HL7.
    dicom_record = read_dicom(dicom_bytes(sample_ecg(seed=1), uid_key="src-1"))
    inputs = [(IdempotencyKey("MODALITY", "DICOM", str(dicom_record.acquisition.sop_instance_uid)), dicom_record),
              (IdempotencyKey("CART", "WARD7", "MSG-2"), sample_ecg(seed=2))]
    stored: dict[str, dict[str, bytes]] = {}
    for n, (key, record) in enumerate(inputs):
        item_id = queue.enqueue(key, b"raw", source="hl7", kind="hl7").item_id
        order = order_from_dicom(key.control_id, key.sender_app, record.patient, accession=f"ACC{n}")
        deliveries = build_deliveries(config, record, order, _score(0.5 + 0.1 * n), key=key, pdf=_PDF)
        assert set(deliveries) == {PACS, FHIR}
        rcid = result_control_id(key.sender_app, key.sender_facility, key.control_id)
        queue.mark_scored(item_id, "MSH|...", rcid, deliveries=deliveries)
        stored[rcid] = deliveries

    async def rounds(n: int, pause_s: float = 0.25) -> None:
        for _ in range(n):
            await stage.send_deliveries("test-node")
            await asyncio.sleep(pause_s)

    asyncio.run(rounds(4))
    assert pacs.received() == [] and fhir_server.accepted == []
    assert fhir_server.refused >= 2  # tried, refused (503), tried again
    assert queue.delivery_counts() == {PACS: {"pending": 2, "sent": 0}, FHIR: {"pending": 2, "sent": 0}}
    scrape = metrics.render().decode()
    assert 'lasan_deliveries_pending{target="pacs"} 2.0' in scrape and 'lasan_retries_total{stage="pacs"}' in scrape
    # The outbox gets the FHIR bundle whether or not the server takes it.
    assert sorted(p.name for p in (tmp_path / "outbox").iterdir()) == sorted(f"{r}.fhir.json" for r in stored)

    pacs.start()
    fhir_server.status = 201
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and queue.delivery_counts()[PACS]["sent"] + \
                queue.delivery_counts()[FHIR]["sent"] < 4:
            asyncio.run(rounds(1, 0.1))
        asyncio.run(rounds(3))  # nothing is sent twice once delivered
        files = pacs.wait_for(4)
    finally:
        pacs.stop()
    assert queue.delivery_counts() == {PACS: {"pending": 0, "sent": 2}, FHIR: {"pending": 0, "sent": 2}}
    scrape = metrics.render().decode()
    assert 'lasan_deliveries_sent_total{target="pacs"} 2.0' in scrape
    assert 'lasan_deliveries_pending{target="fhir"} 0.0' in scrape

    # Exactly once per ECG: 4 files (storescp keeps duplicates apart), the very objects stored at scoring.
    arrived = [pydicom.dcmread(path) for path in files]
    assert len(arrived) == 4
    expected = {str(pydicom.dcmread(io.BytesIO(blob)).SOPInstanceUID)
                for d in stored.values() for blob in unpack_objects(d[PACS])}
    assert sorted(str(ds.SOPInstanceUID) for ds in arrived) == sorted(expected)
    assert sorted(str(ds.SOPClassUID) for ds in arrived) == sorted([COMPREHENSIVE_SR, ENCAPSULATED_PDF] * 2)
    in_dicom_study = [ds for ds in arrived if ds.StudyInstanceUID == dicom_record.acquisition.study_uid]
    assert len(in_dicom_study) == 2  # the DICOM ECG's SR and PDF went into its own study
    for path in files:
        assert dciodvfy_errors(path) == [], path.name
    assert sorted(json.dumps(b, sort_keys=True) for b in fhir_server.accepted) == \
        sorted(json.dumps(json.loads(d[FHIR]), sort_keys=True) for d in stored.values())
    reports = [e["resource"] for b in fhir_server.accepted for e in b["entry"]
               if e["resource"]["resourceType"] == "DiagnosticReport"]
    assert sorted(r["identifier"][0]["value"] for r in reports) == sorted(stored)
    queue.close()


def test_health_names_a_pacs_or_fhir_server_that_is_down(tmp_path, fhir_server):
    from lasan.integration.metrics import Health

    pacs = StoreSCP(tmp_path / "pacs", port=free_port())
    config = config_from_dict({"storage": {"queue_db": "q.sqlite", "outbox": "outbox"},
                               "pacs": pacs.config_section(), "fhir": {"base_url": fhir_server.url}}, tmp_path)
    health = Health.watching(config)
    checks = health.check()
    assert not checks["pacs"]["ok"] and f"PACS 127.0.0.1:{pacs.port} unreachable" in str(checks["pacs"]["detail"])
    assert checks["fhir"]["ok"]  # the FHIR server accepts connections (whatever it answers)
    with pacs:
        assert health.check()["pacs"] == {"ok": True, "detail": None}
    fhir_server.close()
    assert not health.check()["fhir"]["ok"]
