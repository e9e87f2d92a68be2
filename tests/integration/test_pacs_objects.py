"""Results to PACS: the SR and encapsulated PDF of a scored ECG, checked by dicom3tools' dciodvfy,
read back with highdicom, and sent by our C-STORE SCU to a real dcmtk storescp."""

from __future__ import annotations

import io
import shutil
import subprocess

import pytest
from dicom_pacs import StoreSCP, dciodvfy_errors, free_port

from lasan.client.score import Score
from lasan.errors import DeliveryError, IntegrationError
from lasan.formats.dicom import GENERAL_ECG_SOP_CLASS, TWELVE_LEAD_ECG_SOP_CLASS, dicom_bytes, read_dicom
from lasan.formats.sample import sample_ecg
from lasan.integration.config import config_from_dict
from lasan.integration.dicom_scu import store
from lasan.integration.pacs import (
    CODING_SCHEME,
    COMPREHENSIVE_SR,
    ENCAPSULATED_PDF,
    pack_objects,
    pacs_objects,
    unpack_objects,
)
from lasan.leads import MODEL_LEADS
from lasan.record import PatientIdentity

# The smallest valid PDF: enough for the encapsulation tests, which do not render a report.
_PDF = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj 2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
        b"trailer<</Root 1 0 R>>\n%%EOF\n")


def _score() -> Score:
    importance = dict(zip(MODEL_LEADS, (0.3, 0.1, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05), strict=True))
    return Score(
        probabilities={"control": 0.2, "ARVC": 0.7, "LQTS": 0.1}, predicted_class="ARVC",
        screening={"ARVC": True, "LQTS": False}, confirmation={"ARVC": False, "LQTS": False},
        thresholds={"screening": {"ARVC": 0.3, "LQTS": 0.4}, "confirmation": {"ARVC": 0.8, "LQTS": 0.9}},
        lead_importance=importance, model_name="lasan_ensemble", model_version="1-abc", round_trip_ms=3.0,
    )


def _parse(blob: bytes):
    import pydicom

    return pydicom.dcmread(io.BytesIO(blob))


def _items(sr):
    """Every content item of an SR as (code value, item), depth first."""
    out = []

    def walk(items):
        for item in items:
            out.append((item.ConceptNameCodeSequence[0].CodeValue, item))
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return out


def _values(sr) -> dict[str, object]:
    values: dict[str, object] = {}
    for code, item in _items(sr):
        if item.ValueType == "NUM":
            values[code] = float(item.MeasuredValueSequence[0].NumericValue)
        elif item.ValueType == "CODE":
            values[code] = item.ConceptCodeSequence[0].CodeValue
        elif item.ValueType == "TEXT":
            values[code] = item.TextValue
    return values


def test_sr_of_a_dicom_ecg_is_in_its_study_references_it_and_carries_the_score(tmp_path):
    import highdicom as hd

    source = _parse(dicom_bytes(sample_ecg(seed=3), uid_key="source-ecg"))
    record = read_dicom(dicom_bytes(sample_ecg(seed=3), uid_key="source-ecg"))
    sr_bytes, pdf_bytes = pacs_objects(record, _score(), uid_key="MUSE|HOSP|1.2.3", pdf=_PDF)
    sr, pdf = _parse(sr_bytes), _parse(pdf_bytes)

    assert sr.SOPClassUID == COMPREHENSIVE_SR and pdf.SOPClassUID == ENCAPSULATED_PDF
    assert sr.StudyInstanceUID == pdf.StudyInstanceUID == source.StudyInstanceUID
    assert sr.PatientID == pdf.PatientID == source.PatientID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    series = evidence.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert series.ReferencedSOPSequence[0].ReferencedSOPClassUID == TWELVE_LEAD_ECG_SOP_CLASS
    assert pdf.SourceInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert pdf.EncapsulatedDocument[: len(_PDF)] == _PDF and pdf.EncapsulatedDocumentLength == len(_PDF)

    values = _values(sr)
    assert values["P-ARVC"] == pytest.approx(0.7, abs=1e-6) and values["P-control"] == pytest.approx(0.2, abs=1e-6)
    assert values["T-ARVC"] == pytest.approx(0.3, abs=1e-6)  # the screening point (the default)
    assert values["D-ARVC"] == "10828004" and values["D-LQTS"] == "260385009"  # SNOMED positive / negative
    assert values["PRED"] == "ARVC"
    for lead, weight in _score().lead_importance.items():
        assert values[f"LI-{lead}"] == pytest.approx(weight, abs=1e-6)
    assert values["111003"] == "1-abc" and sr.SoftwareVersions == "1-abc"  # model version (TID 4019 + header)
    assert all(item.ConceptNameCodeSequence[0].CodingSchemeDesignator == CODING_SCHEME
               for code, item in _items(sr) if code.startswith(("P-", "T-", "D-", "LI-")))
    # highdicom reads it back as a TID 1500 measurement report with our two TID 1501 groups.
    report = hd.sr.ComprehensiveSR.from_dataset(sr).content
    assert isinstance(report, hd.sr.MeasurementReport)
    classification, importance = report.get_image_measurement_groups()
    assert classification.tracking_identifier == "LASAN classification"
    assert classification.method is not None and classification.method.value == "OP-screening"
    assert {m.name.value: m.value for m in classification.get_measurements()}["P-LQTS"] == pytest.approx(0.1)
    assert {q.name.value: q.value.value for q in classification.get_qualitative_evaluations()}["PRED"] == "ARVC"
    assert len(importance.get_measurements()) == len(MODEL_LEADS)
    for blob, name in ((sr_bytes, "sr.dcm"), (pdf_bytes, "pdf.dcm")):
        (tmp_path / name).write_bytes(blob)
        assert dciodvfy_errors(tmp_path / name) == [], name


def test_non_dicom_ecg_gets_a_new_stable_study_with_its_patient_and_order():
    from lasan.hl7.result import order_from_dicom

    record = sample_ecg(seed=4)
    order = order_from_dicom("CTRL-9", "MUSE", PatientIdentity(), accession="ACC^77")
    first = [_parse(b) for b in pacs_objects(record, _score(), uid_key="MUSE|HOSP|CTRL-9", order=order, pdf=_PDF)]
    again = [_parse(b) for b in pacs_objects(record, _score(), uid_key="MUSE|HOSP|CTRL-9", order=order, pdf=_PDF)]
    other = [_parse(b) for b in pacs_objects(record, _score(), uid_key="MUSE|HOSP|CTRL-10", order=order, pdf=_PDF)]
    sr, pdf = first
    assert sr.PatientID == pdf.PatientID == record.patient.patient_id
    assert str(sr.PatientName) == str(pdf.PatientName) == (record.patient.name or "")
    assert sr.AccessionNumber == "ACC^77"  # the filler order's first component, HL7 escapes undone
    assert sr.StudyInstanceUID == pdf.StudyInstanceUID
    assert "CurrentRequestedProcedureEvidenceSequence" not in sr and "SourceInstanceSequence" not in pdf
    # Same ECG (idempotency key) -> same UIDs on every attempt; another ECG -> others.
    assert [d.SOPInstanceUID for d in first] == [d.SOPInstanceUID for d in again]
    assert sr.StudyInstanceUID == again[0].StudyInstanceUID != other[0].StudyInstanceUID
    assert len({d.SOPInstanceUID for d in first + other}) == 4


def test_a_free_text_patient_name_never_reaches_warnings_or_the_log(caplog):
    """highdicom warns about a name without '^' and quotes it; stderr is a listener's log (no PHI there)."""
    import logging
    import warnings
    from dataclasses import replace

    record = replace(sample_ecg(seed=5), patient=PatientIdentity(patient_id="P-1", name="Jane Doe"))
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        sr_bytes, _ = pacs_objects(record, _score(), uid_key="S|F|1", pdf=_PDF)
    assert str(_parse(sr_bytes).PatientName) == "Jane Doe"  # the object keeps the name as sent
    assert not [w for w in caught if "Jane" in str(w.message)]
    assert "Jane" not in caplog.text


def test_awkward_identities_still_make_valid_objects(tmp_path):
    from dataclasses import replace

    identity = PatientIdentity(patient_id="ID\\with\\backslashes" + "9" * 80, name="Ørsted-Ünal^Zoë" + "x" * 90,
                               birth_date="1961-02-03", sex="female", accession_number="A" * 30)
    record = replace(sample_ecg(seed=8), patient=identity)
    record = replace(record, acquisition=replace(record.acquisition, acquired_at="2024-05-06T07:08:09+02:00"))
    sr, pdf = (_parse(b) for b in pacs_objects(record, _score(), uid_key="awkward", pdf=_PDF))
    assert sr.PatientBirthDate == "19610203" and sr.PatientSex == "F" and sr.StudyDate == "20240506"
    assert sr.StudyTime == "070809" and str(sr.PatientName).startswith("Ørsted-Ünal^Zoë")
    assert "\\" not in sr.PatientID and len(sr.PatientID) <= 64 and len(sr.AccessionNumber) <= 16
    for ds, name in ((sr, "sr.dcm"), (pdf, "pdf.dcm")):
        ds.save_as(tmp_path / name, enforce_file_format=True)
        assert dciodvfy_errors(tmp_path / name) == [], name


def test_our_ecg_waveform_writer_passes_dciodvfy(tmp_path):
    from dataclasses import replace

    from lasan.record import ECGRecord

    twelve = replace(sample_ecg(seed=1), acquisition=replace(sample_ecg(seed=1).acquisition,
                                                             filter_low_hz=0.05, filter_high_hz=150.0))
    # Identities as HL7 / vendor XML readers give them: free text in each attribute's VR.
    awkward = replace(twelve, patient=PatientIdentity(patient_id="P\\" + "9" * 80, name="Ørsted^Zoë" + "x" * 90,
                                                      birth_date="1961-02-03", sex="female", accession_number="A" * 30),
                      acquisition=replace(twelve.acquisition, manufacturer="M" * 70,
                                          acquired_at="2024-05-06T07:08:09+02:00"))
    written = _parse(dicom_bytes(awkward))
    assert (written.PatientBirthDate, written.PatientSex, written.AcquisitionDateTime) == \
        ("19610203", "F", "20240506070809")
    assert read_dicom(dicom_bytes(awkward)).patient.birth_date == "19610203"
    base = sample_ecg(seed=2)
    general = ECGRecord(base.signal.repeat(4, axis=1), base.fs * 4, base.leads, base.acquisition, base.patient)
    for n, (record, sop) in enumerate(((twelve, TWELVE_LEAD_ECG_SOP_CLASS), (general, GENERAL_ECG_SOP_CLASS),
                                       (awkward, TWELVE_LEAD_ECG_SOP_CLASS))):
        path = tmp_path / f"{n}-{sop}.dcm"
        path.write_bytes(dicom_bytes(record))
        assert _parse(path.read_bytes()).SOPClassUID == sop
        assert dciodvfy_errors(path) == [], sop


def test_pack_round_trips_and_refuses_what_it_did_not_write():
    blobs = [b"\x00" * 3, b"DICM" * 10, b""]
    assert unpack_objects(pack_objects(blobs)) == blobs
    with pytest.raises(IntegrationError, match="not a LASAN object list"):
        unpack_objects(b"junk")
    with pytest.raises(IntegrationError, match="truncated"):
        unpack_objects(pack_objects([b"abcdef"])[:-2])


def test_c_store_to_storescp_delivers_both_objects_readable_by_dcmdump(tmp_path):
    record = read_dicom(dicom_bytes(sample_ecg(seed=5), uid_key="src"))
    objects = pacs_objects(record, _score(), uid_key="k", pdf=_PDF)
    with StoreSCP(tmp_path / "pacs", ae_title="TESTPACS") as pacs:
        config = config_from_dict({"pacs": pacs.config_section()}, tmp_path)
        assert config.pacs is not None
        report = store(objects, config.pacs)
        files = pacs.wait_for(2)
    assert [code for _, code in report.statuses] == [0, 0]
    arrived = {str(_parse(p.read_bytes()).SOPInstanceUID): p for p in files}
    assert set(arrived) == {str(_parse(b).SOPInstanceUID) for b in objects}
    dcmdump = shutil.which("dcmdump")
    if dcmdump:
        sr_file = arrived[str(_parse(objects[0]).SOPInstanceUID)]
        dump = subprocess.run([dcmdump, str(sr_file)], capture_output=True, text=True, timeout=30).stdout
        assert "ComprehensiveSRStorage" in dump and "LASAN classification" in dump and "P-ARVC" in dump


def test_c_store_to_a_pacs_that_is_down_rejects_us_or_refuses_raises_delivery_error(tmp_path):
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    objects = pacs_objects(sample_ecg(seed=6), _score(), uid_key="k2")
    with StoreSCP(tmp_path / "pacs") as pacs:
        down = config_from_dict({"pacs": pacs.config_section()}, tmp_path).pacs
    assert down is not None
    with pytest.raises(DeliveryError, match="PACS .* at 127.0.0.1"):
        store(objects, down)  # nothing listens there any more
    # storescp accepts any called AE title; a pynetdicom SCP that checks it, and answers
    # "out of resources" (0xA700) to every C-STORE, is a real peer for the other two cases.
    ae = AE(ae_title="RIGHTAE")
    ae.require_called_aet = True
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, lambda event: 0xA700)])
    try:
        section = {"host": "127.0.0.1", "port": port, "timeout_s": 5.0}
        wrong = config_from_dict({"pacs": {**section, "called_ae": "WRONGAE"}}, tmp_path).pacs
        full = config_from_dict({"pacs": {**section, "called_ae": "RIGHTAE"}}, tmp_path).pacs
        assert wrong is not None and full is not None
        with pytest.raises(DeliveryError, match="rejected the association"):
            store(objects, wrong)
        with pytest.raises(DeliveryError, match="status 0xA700"):
            store(objects, full)
    finally:
        server.shutdown()
    # A PACS that takes encapsulated PDFs but not SRs: the SR's SOP class is named.
    objects = pacs_objects(sample_ecg(seed=6), _score(), uid_key="k2", pdf=_PDF)
    pdf_only = AE(ae_title="PDFONLY")
    pdf_only.add_supported_context(ENCAPSULATED_PDF)
    port = free_port()
    server = pdf_only.start_server(("127.0.0.1", port), block=False)
    try:
        config = config_from_dict({"pacs": {"host": "127.0.0.1", "port": port, "called_ae": "PDFONLY"}}, tmp_path)
        assert config.pacs is not None
        with pytest.raises(DeliveryError, match="does not accept Comprehensive SR Storage"):
            store(objects, config.pacs)
    finally:
        server.shutdown()


def test_c_store_over_dicom_tls(tmp_path):
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed (Debian package openssl, in the Makefile's APT_PACKAGES)")

    def self_signed(name: str):
        cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
                        "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True, timeout=60)
        return cert, key

    (cert, key), (other, _) = self_signed("pacs"), self_signed("other")
    objects = pacs_objects(sample_ecg(seed=7), _score(), uid_key="tls", pdf=_PDF)
    with StoreSCP(tmp_path / "pacs", tls=(key, cert)) as pacs:
        trusted = config_from_dict({"pacs": pacs.config_section(tls={"ca_file": str(cert)})}, tmp_path).pacs
        untrusted = config_from_dict({"pacs": pacs.config_section(tls={"ca_file": str(other)})}, tmp_path).pacs
        plain = config_from_dict({"pacs": pacs.config_section()}, tmp_path).pacs
        assert trusted is not None and untrusted is not None and plain is not None
        assert [code for _, code in store(objects, trusted).statuses] == [0, 0]
        assert len(pacs.wait_for(2)) == 2
        for wrong in (untrusted, plain):  # a certificate we do not trust; no TLS at all
            with pytest.raises(DeliveryError):
                store(objects, wrong)
        assert len(pacs.received()) == 2


def test_a_real_philips_export_makes_valid_result_objects(tmp_path):
    from testkit import PHILIPS_SAMPLE

    from lasan.formats import read_ecg

    record = read_ecg(PHILIPS_SAMPLE)
    sr, pdf = pacs_objects(record, _score(), uid_key="philips", pdf=_PDF)
    ds = _parse(sr)
    assert (ds.StudyDate, ds.StudyTime) == ("20111201", "072734")  # the acquisition time in the export
    assert ds.PatientID == record.patient.patient_id and ds.PatientSex == "M"
    for blob, name in ((sr, "sr.dcm"), (pdf, "pdf.dcm")):
        (tmp_path / name).write_bytes(blob)
        assert dciodvfy_errors(tmp_path / name) == [], name
