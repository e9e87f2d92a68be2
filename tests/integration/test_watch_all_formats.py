"""The watch folder end to end over every format LASAN reads: a folder holding one ECG of each
format (the real Philips export, GE MUSE, HL7 aECG, SCP-ECG, Mortara, EDF+, a FHIR Observation,
DICOM and HL7) and a corrupt one of each. A real Triton scores every good file; each yields a
result ORU^R01 at the downstream MLLP server, a Comprehensive SR and an encapsulated PDF at a
real dcmtk storescp, and a FHIR DiagnosticReport (outbox file and POST to a local FHIR server);
each corrupt file lands in ``rejected/`` with its reason. No patient identifier is logged."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_pacs import FhirServer, StoreSCP, dciodvfy_errors, free_port
from feedkit import obx_values, oru, result_probabilities

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))  # the format builders (tests/core)
from test_formats_vendor import (  # noqa: E402 - after the path is set
    AECG_UV,
    EDF_UV,
    EIGHT,
    GE_UV,
    MORTARA_UNITS_PER_MV,
    PATIENT_ID,
    PHILIPS,
    SCP_NV,
    SUFFIX,
    _corrupt,
    aecg_bytes,
    edf_bytes,
    ge_muse_bytes,
    mortara_bytes,
    scp_bytes,
)
from test_formats_vendor_fhir import FACTOR_UV, ecg_observation  # noqa: E402

from lasan.formats import read_ecg, write_ecg  # noqa: E402
from lasan.formats.sample import sample_ecg  # noqa: E402
from lasan.integration.config import config_from_dict  # noqa: E402
from lasan.integration.pacs import COMPREHENSIVE_SR, ENCAPSULATED_PDF  # noqa: E402
from lasan.leads import STANDARD_LEADS  # noqa: E402

pytestmark = pytest.mark.slow
PROB_ATOL = 1e-5  # served through the worker vs scored directly: never compared exactly


def _counts(seed: int, resolution_uv: float, leads: tuple[str, ...] = STANDARD_LEADS) -> np.ndarray:
    """A different ECG per format (so each result can be told apart), as integer counts."""
    record = sample_ecg(fs=500, duration_s=10.0, seed=seed, heart_rate_bpm=55.0 + 7 * seed)
    return np.rint(np.stack([record.lead(lead) for lead in leads]) * 1000.0 / resolution_uv).astype(np.int64)


def _files(tmp: Path) -> dict[str, bytes]:
    files = {
        "ge-muse": ge_muse_bytes(_counts(1, GE_UV, EIGHT)),
        "hl7-aecg": aecg_bytes(_counts(2, AECG_UV)),
        "scp-ecg": scp_bytes(_counts(3, SCP_NV / 1000.0)),
        "mortara": mortara_bytes(_counts(4, 1000.0 / MORTARA_UNITS_PER_MV)),
        "edf": edf_bytes(_counts(5, EDF_UV)),
        "fhir": json.dumps(ecg_observation(_counts(6, FACTOR_UV))).encode(),
        "dicom": write_ecg(sample_ecg(seed=7), tmp / "src.dcm").read_bytes(),
        "hl7": oru(sample_ecg(seed=8), "WATCH-HL7"),
    }
    if PHILIPS.exists():
        files["philips-sierra"] = PHILIPS.read_bytes()
    return files


def _suffix(fmt: str) -> str:
    return {"dicom": ".dcm", "hl7": ".hl7"}.get(fmt) or SUFFIX[fmt]


def _broken(fmt: str, data: bytes) -> bytes:
    if fmt in ("dicom", "hl7"):
        return data[: len(data) // 3]  # a transfer cut short
    return _corrupt(fmt, data)


def _sr_probabilities(ds) -> dict[str, float]:
    import highdicom as hd

    groups = hd.sr.ComprehensiveSR.from_dataset(ds).content.get_image_measurement_groups()
    return {m.name.value[len("P-"):]: float(m.value) for m in groups[0].get_measurements()
            if m.name.value.startswith("P-")}


def _fhir_probabilities(bundle: dict) -> dict[str, float]:
    from fhir.resources.R4B.bundle import Bundle

    Bundle.model_validate(bundle)  # a valid FHIR R4 Bundle
    out = {}
    for entry in bundle["entry"]:
        code = entry["resource"].get("code", {}).get("coding", [{}])[0].get("code", "")
        if entry["resource"]["resourceType"] == "Observation" and code.startswith("probability-"):
            out[code[len("probability-"):]] = float(entry["resource"]["valueQuantity"]["value"])
    return out


def _lower(probabilities: dict[str, float]) -> dict[str, float]:
    return {name.lower(): value for name, value in probabilities.items()}


def _match(probabilities: dict[str, float], candidates: dict[str, dict[str, float]]) -> str:
    """The format whose ORU result carries these probabilities."""
    probabilities = _lower(probabilities)
    hits = [fmt for fmt, p in candidates.items()
            if p.keys() == probabilities.keys() and all(abs(p[c] - probabilities[c]) <= 1e-4 for c in p)]
    assert hits, (probabilities, candidates)
    return hits[0]


def test_watch_folder_scores_every_format_to_oru_sr_pdf_and_fhir_and_rejects_each_corrupt_one(
        tmp_path, triton_server, downstream, caplog):
    from lasan.client.api import TritonScorer
    from lasan.integration.cli import IntegrationApp

    files = _files(tmp_path)
    inbox = tmp_path / "in"
    fhir = FhirServer()
    fhir.status = 201
    pacs = StoreSCP(tmp_path / "pacs", ae_title="PACS", port=free_port())
    cfg = config_from_dict({
        "listener": {"enabled": False},
        "watch": {"enabled": True, "folder": "in", "poll_interval_s": 0.1, "stable_s": 0.2},
        "triton": {"url": triton_server.grpc_url, "timeout_s": 30},
        "downstream": {"host": "127.0.0.1", "port": downstream.port, "timeout_s": 5},
        "storage": {"queue_db": "q.sqlite", "outbox": "out"},
        "retry": {"initial_s": 0.2, "max_s": 1.0},
        "metrics": {"enabled": False},
        "pacs": pacs.config_section(timeout_s=10.0),
        "fhir": {"base_url": fhir.url},
    }, tmp_path)
    # What each file's result must say: the same file scored directly through Triton.
    with TritonScorer(triton_server.grpc_url, timeout_s=60) as scorer:
        expected = {fmt: scorer.score(read_ecg(data, fmt=None)).probabilities for fmt, data in files.items()}
    # The watch folder keys HL7 by its MSH-10, DICOM by its SOP Instance UID, any other file by its content.
    originals = {fmt: hashlib.sha256(data).hexdigest()[:40] for fmt, data in files.items()}
    originals["hl7"] = "WATCH-HL7"
    originals["dicom"] = str(pydicom.dcmread(io.BytesIO(files["dicom"])).SOPInstanceUID)

    async def main() -> dict[str, list[str]]:
        app = IntegrationApp(cfg)
        await app.start()
        try:
            for fmt, data in files.items():
                (inbox / f"good-{fmt}{_suffix(fmt)}").write_bytes(data)
                (inbox / f"bad-{fmt}{_suffix(fmt)}").write_bytes(_broken(fmt, data))
            got = await asyncio.to_thread(downstream.wait_for, set(originals.values()), 180)
            await asyncio.to_thread(pacs.wait_for, 2 * len(files), 120)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(fhir.accepted) < len(files):
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)  # further delivery rounds: nothing arrives twice
            return got
        finally:
            await app.stop()

    with pacs, caplog.at_level(logging.DEBUG):
        try:
            got = asyncio.run(main())
        finally:
            fhir.close()
        arrived = pacs.received()

    # One result ORU per good file, carrying the probabilities the ensemble gives that file.
    oru_probs = {}
    for fmt, original in originals.items():
        (result,) = got[original]
        oru_probs[fmt] = _lower(result_probabilities(result))  # the ORU codes are upper case (PROB-CONTROL)
        assert oru_probs[fmt] == pytest.approx(_lower(expected[fmt]), abs=PROB_ATOL), fmt
        assert obx_values(result)["ORIG-MSH10"] == original
    assert len(downstream.received) == len(files)

    # One SR and one encapsulated PDF per scored ECG at the PACS, each valid for dciodvfy.
    datasets = [pydicom.dcmread(path) for path in arrived]
    assert len(datasets) == 2 * len(files) and len({str(ds.SOPInstanceUID) for ds in datasets}) == len(datasets)
    by_study: dict[str, list] = {}
    for ds in datasets:
        by_study.setdefault(str(ds.StudyInstanceUID), []).append(ds)
    assert len(by_study) == len(files)
    sr_formats = []
    for objects in by_study.values():
        assert sorted(str(ds.SOPClassUID) for ds in objects) == sorted([COMPREHENSIVE_SR, ENCAPSULATED_PDF])
        (sr,) = [ds for ds in objects if ds.SOPClassUID == COMPREHENSIVE_SR]
        (pdf,) = [ds for ds in objects if ds.SOPClassUID == ENCAPSULATED_PDF]
        assert pdf.EncapsulatedDocument.startswith(b"%PDF-")
        sr_formats.append(_match(_sr_probabilities(sr), oru_probs))
    assert sorted(sr_formats) == sorted(files)  # every format's ECG has its own SR
    for path in arrived:
        assert dciodvfy_errors(path) == [], path.name

    # One FHIR DiagnosticReport Bundle per scored ECG, in the outbox and POSTed.
    bundles = [json.loads(p.read_text()) for p in sorted((tmp_path / "out").glob("*.fhir.json"))]
    assert len(bundles) == len(files) and len(fhir.accepted) == len(files)
    for bundle in bundles:
        kinds = [entry["resource"]["resourceType"] for entry in bundle["entry"]]
        assert kinds.count("DiagnosticReport") == 1
    assert sorted(_match(_fhir_probabilities(b), oru_probs) for b in bundles) == sorted(files)

    # Every good file processed; every corrupt one rejected with its reason.
    processed = sorted(p.name for p in (inbox / "processed").iterdir())
    assert processed == sorted(f"good-{fmt}{_suffix(fmt)}" for fmt in files)
    rejected = inbox / "rejected"
    for fmt in files:
        name = f"bad-{fmt}{_suffix(fmt)}"
        assert (rejected / name).exists(), fmt
        reason = (rejected / f"{name}.reason.txt").read_text().strip()
        # A message cut mid-segment is explained by the segment it breaks; a file by its damage.
        problem = ("OBX segment",) if fmt == "hl7" else ("truncated", "corrupt")
        assert any(word in reason for word in problem), (fmt, reason)
        assert PATIENT_ID not in reason
    assert PATIENT_ID not in caplog.text and "Doe^Jane" not in caplog.text
