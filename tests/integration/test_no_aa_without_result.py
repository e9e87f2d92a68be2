"""No AA without a result (issue 12).

1. What the served model would refuse is refused at intake, on every entry point (real MLLP
   socket, real DICOM association, the watch folder), with its reason, and nothing is stored.
2. A control ID (MSH-10 / SOP Instance UID) re-used for different content gets AE 205 / DICOM
   0x0111 / rejected/, saying so; a genuine re-send still gets the original ACK.
3. An item that fails for good after AA still produces a result the sender's system sees: a
   "not scored" ORU^R01 (OBR-25 = X, OBX-11 = X with the reason), delivered exactly once
   (the end-to-end case runs a real Triton whose model refuses what the intake took).
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import re

import numpy as np
import pytest
from feedkit import oru, small_ecg

from lasan.client.request import wire_ecg
from lasan.errors import LasanError
from lasan.formats.dicom import dicom_bytes
from lasan.hl7.ack import parse_ack
from lasan.hl7.result import result_control_id
from lasan.integration.config import DicomConfig, ListenerConfig, WatchConfig
from lasan.integration.dicom_receiver import DicomReceiver
from lasan.integration.intake import Intake
from lasan.integration.listener import MLLPListener
from lasan.integration.metrics import Health, Metrics
from lasan.integration.mllp import MLLPClient
from lasan.integration.queue import DurableQueue
from lasan.integration.watch import PROCESSED, REJECTED, WatchFolder
from lasan.preprocessing import preprocess_array
from lasan.validation import Reading

LIMB_FROM_III = ("II", "III", "V1", "V2", "V3", "V4", "V5", "V6")  # lead I is derived: I = II - III


def _obx5(message: bytes, code: str, value: str) -> bytes:
    """``message`` with OBX-5 of the OBX whose OBX-3 contains ``code`` replaced by ``value``."""
    segments = message.decode().split("\r")
    i = next(k for k, s in enumerate(segments) if s.startswith("OBX|") and code in s.split("|")[3])
    fields = segments[i].split("|")
    fields[5] = value
    segments[i] = "|".join(fields)
    return "\r".join(segments).encode()


def _first_sample(message: bytes, code: str, value: str) -> bytes:
    segments = message.decode().split("\r")
    obx = next(s for s in segments if s.startswith("OBX|") and code in s.split("|")[3])
    samples = obx.split("|")[5].split("^")
    return _obx5(message, code, "^".join([value, *samples[1:]]))


def _refused_corpus() -> dict[str, bytes]:
    """name -> bytes the served model would refuse (each with its own control ID)."""
    short = small_ecg(seed=21)
    short = dataclasses.replace(short, signal=np.ascontiguousarray(short.signal[:, : int(short.fs * 1.5)]))
    two_limbs = oru(small_ecg(seed=22, leads=LIMB_FROM_III), "OVERFLOW")
    # 3e41 uV = 3e38 mV in II and -3e38 mV in III: each fits float32, I = II - III does not.
    overflow = _first_sample(_first_sample(two_limbs, "MDC_ECG_LEAD_II^", "300000000000000000000000000000000000000000"),
                             "MDC_ECG_LEAD_III", "-300000000000000000000000000000000000000000")
    dicom_short = small_ecg(seed=25, fs=500.0)
    return {
        "rate_1e-300.hl7": _obx5(oru(small_ecg(seed=20), "RATE0"), "MDC_ATTR_SAMP_RATE", "1e-300"),
        "rate_50.hl7": _obx5(oru(small_ecg(seed=20), "RATE50"), "MDC_ATTR_SAMP_RATE", "50"),
        "rate_1e6.hl7": _obx5(oru(small_ecg(seed=20), "RATE1E6"), "MDC_ATTR_SAMP_RATE", "1000000"),
        "short_1.5s.hl7": oru(short, "SHORT"),
        "nan_samples.hl7": _first_sample(oru(small_ecg(seed=23), "NANS"), "MDC_ECG_LEAD_V2", ""),
        "huge_sample.hl7": _first_sample(oru(small_ecg(seed=23), "HUGE"), "MDC_ECG_LEAD_V3", "1e300"),
        "zero_length_lead.hl7": _obx5(oru(small_ecg(seed=24), "ZEROLEN"), "MDC_ECG_LEAD_V4", ""),
        "derived_overflow.hl7": overflow,
        "rate_1e-300.dcm": dicom_bytes(dataclasses.replace(small_ecg(seed=26), fs=1e-300)),
        "rate_1e6.dcm": dicom_bytes(dataclasses.replace(small_ecg(seed=26), fs=1e6)),
        "short_1.5s.dcm": dicom_bytes(dataclasses.replace(
            dicom_short, signal=np.ascontiguousarray(dicom_short.signal[:, :750]))),
        "zero_samples.dcm": dicom_bytes(dataclasses.replace(dicom_short, signal=dicom_short.signal[:, :0])),
    }


def _served_model_refuses(name: str, data: bytes) -> bool:
    """True when the reader refuses the bytes, or the served preprocess code refuses what the
    client would send for them (the request built by :func:`lasan.client.request.wire_ecg`)."""
    try:
        with np.errstate(all="ignore"):
            record = Reading.start(data, suffix=name[name.rfind("."):]).read().record
            wire = wire_ecg(record)
            preprocess_array(wire.ecg_mv[0], float(wire.sampling_rate_hz[0, 0]))
    except LasanError:
        return True
    return False


def _send_mllp(tmp_path, items: dict[str, bytes], queue: DurableQueue | None = None) -> dict[str, tuple[str, str, bytes]]:
    """name -> (MSA-1, MSA-3 / ERR text, the ACK as received) over a real loopback socket."""
    intake = Intake(queue or DurableQueue(tmp_path / "mllp.sqlite"), Metrics(), Health())

    async def main() -> dict[str, tuple[str, str, bytes]]:
        listener = MLLPListener(ListenerConfig(port=0), intake)
        port = await listener.start()
        out = {}
        try:
            for name, data in items.items():
                async with MLLPClient("127.0.0.1", port, timeout_s=30) as client:
                    reply = await client.send(data)
                ack = parse_ack(reply)
                out[name] = (ack.code, ack.text or "", reply)
        finally:
            await listener.stop()
        return out

    return asyncio.run(asyncio.wait_for(main(), 120))


def _store_dicom(tmp_path, items: dict[str, bytes], queue: DurableQueue | None = None) -> dict[str, tuple[int, str]]:
    """name -> (C-STORE status, Error Comment) over a real association."""
    import pydicom
    from pynetdicom import AE
    from pynetdicom.sop_class import GeneralECGWaveformStorage, TwelveLeadECGWaveformStorage

    receiver = DicomReceiver(DicomConfig(enabled=True, port=0, min_free_disk_mb=0),
                             Intake(queue or DurableQueue(tmp_path / "dicom.sqlite"), Metrics(), Health()),
                             disk_path=tmp_path)
    port = receiver.start()
    out = {}
    try:
        for name, data in items.items():
            ae = AE(ae_title="ECGCART")
            ae.add_requested_context(TwelveLeadECGWaveformStorage)
            ae.add_requested_context(GeneralECGWaveformStorage)
            assoc = ae.associate("127.0.0.1", port, ae_title="LASAN")
            assert assoc.is_established
            response = assoc.send_c_store(pydicom.dcmread(io.BytesIO(data)))
            assoc.release()
            out[name] = (int(response.Status), str(response.get("ErrorComment", "")))
    finally:
        receiver.stop()
    return out


def _watch(tmp_path, items: dict[str, bytes], queue: DurableQueue | None = None) -> dict[str, str | None]:
    """name -> None when processed, else the reason written beside it in rejected/."""
    folder = tmp_path / "watch"
    folder.mkdir(exist_ok=True)
    watch = WatchFolder(WatchConfig(enabled=True, folder=folder, stable_s=0),
                        Intake(queue or DurableQueue(tmp_path / "watch.sqlite"), Metrics(), Health()))
    watch.prepare()
    for name, data in items.items():
        (folder / name).write_bytes(data)
    watch.scan_once()
    out: dict[str, str | None] = {}
    for name in items:
        reason = folder / REJECTED / f"{name}.reason.txt"
        out[name] = reason.read_text(encoding="utf-8").strip() if reason.exists() else None
        if out[name] is None:
            assert (folder / PROCESSED / name).exists(), name
    return out


@pytest.fixture(scope="module")
def refused_corpus() -> dict[str, bytes]:
    return _refused_corpus()


def test_every_input_in_the_corpus_is_one_the_served_model_refuses(refused_corpus):
    # Otherwise this file would test nothing: each input must really be refused downstream.
    assert all(_served_model_refuses(name, data) for name, data in refused_corpus.items())
    assert not _served_model_refuses("good.hl7", oru(small_ecg(seed=27), "GOOD"))


def test_what_the_model_refuses_gets_ae_on_a_real_mllp_socket_and_is_not_stored(tmp_path, refused_corpus):
    hl7 = {n: d for n, d in refused_corpus.items() if n.endswith(".hl7")}
    queue = DurableQueue(tmp_path / "q.sqlite")
    answers = _send_mllp(tmp_path, {**hl7, "good.hl7": oru(small_ecg(seed=27), "GOOD")}, queue)
    assert answers.pop("good.hl7")[0] == "AA"
    for name, (code, text, _) in answers.items():
        assert code == "AE" and text and "internal error" not in text, (name, code, text)
    assert "sampling rate 1e-300 Hz" in answers["rate_1e-300.hl7"][1]
    assert "at least 2 s" in answers["short_1.5s.hl7"][1]
    assert "no samples" in answers["zero_length_lead.hl7"][1]
    assert re.search("derived|not finite", answers["derived_overflow.hl7"][1])
    assert queue.counts()["received"] == 1  # only the good one


def test_what_the_model_refuses_gets_a_failure_status_on_a_real_dicom_association(tmp_path, refused_corpus):
    dicom = {n: d for n, d in refused_corpus.items() if n.endswith(".dcm")}
    queue = DurableQueue(tmp_path / "q.sqlite")
    answers = _store_dicom(tmp_path, dicom, queue)
    for name, (status, comment) in answers.items():
        assert status != 0 and comment, (name, hex(status), comment)
    assert "1e-300" in answers["rate_1e-300.dcm"][1]
    assert queue.counts()["received"] == 0


def test_what_the_model_refuses_goes_to_rejected_with_its_reason_from_the_watch_folder(tmp_path, refused_corpus):
    queue = DurableQueue(tmp_path / "q.sqlite")
    reasons = _watch(tmp_path, refused_corpus, queue)
    for name, reason in reasons.items():
        assert reason and "internal error" not in reason, (name, reason)
    assert "1e-300" in reasons["rate_1e-300.hl7"] and "1e-300" in reasons["rate_1e-300.dcm"]
    assert queue.counts()["received"] == 0


def _msh(message: bytes, index: int, value: str) -> bytes:
    text = message.decode()
    first, rest = text.split("\r", 1)
    fields = first.split("|")
    fields[index] = value
    return ("|".join(fields) + "\r" + rest).encode()



def test_a_derived_limb_lead_that_overflows_float32_is_refused_by_validate_record():
    from lasan.errors import BadWaveformError
    from lasan.validation import validate_record

    record = small_ecg(seed=28, leads=LIMB_FROM_III)  # a reader that leaves lead I to the client
    signal = record.signal.copy()
    signal[0, 10], signal[1, 10] = 3e38, -3e38  # II and III fit float32; I = II - III does not
    with pytest.raises(BadWaveformError, match="derived"):
        validate_record(dataclasses.replace(record, signal=signal))


# -- 2. a control ID re-used for different content -------------------------------------------


def _err3(ack: bytes) -> str:
    err = next(s for s in ack.decode().split("\r") if s.startswith("ERR|"))
    return err.split("|")[3].split("^")[0]


def test_a_reused_msh10_gets_ae_205_and_a_genuine_resend_the_original_ack(tmp_path):
    first = oru(small_ecg(seed=30), "RE-1")
    resend = _msh(first, 6, "20300101120000")  # the same message, MSH-7 set again by the sender's engine
    other_patient = dataclasses.replace(small_ecg(seed=31), patient=dataclasses.replace(
        small_ecg(seed=31).patient, patient_id="MRN0000002", name="Other^Person"))
    reused = oru(other_patient, "RE-1")  # another patient's ECG under the same MSH-10
    queue = DurableQueue(tmp_path / "q.sqlite")
    answers = _send_mllp(tmp_path, {"first": first, "resend": resend, "reused": reused, "again": first}, queue)
    assert answers["first"][0] == "AA"
    assert answers["resend"][2] == answers["first"][2] and answers["again"][2] == answers["first"][2]  # byte for byte
    code, text, ack = answers["reused"]
    assert code == "AE" and _err3(ack) == "205" and parse_ack(ack).control_id == "RE-1"
    assert "already used for a different message" in text and "MRN0000002" not in text
    assert queue.counts()["received"] == 1  # the re-used ID stored nothing


def test_a_reused_sop_instance_uid_gets_0111_and_an_unchanged_resend_success(tmp_path):
    import pydicom

    first = dicom_bytes(small_ecg(seed=32, fs=500.0))
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(small_ecg(seed=33, fs=500.0))))
    uid = pydicom.dcmread(io.BytesIO(first)).SOPInstanceUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    queue = DurableQueue(tmp_path / "q.sqlite")
    answers = _store_dicom(tmp_path, {"first": first, "resend": first, "reused": buffer.getvalue()}, queue)
    assert answers["first"][0] == 0 and answers["resend"][0] == 0
    status, comment = answers["reused"]
    assert status == 0x0111 and "already used" in comment
    assert queue.counts()["received"] == 1


def test_a_reused_msh10_in_the_watch_folder_goes_to_rejected_with_the_reason(tmp_path):
    queue = DurableQueue(tmp_path / "q.sqlite")
    first = oru(small_ecg(seed=34), "W-1")  # built once: its OBR-7 / OBX-14 carry the time it was built
    assert _watch(tmp_path, {"a.hl7": first}, queue) == {"a.hl7": None}
    reasons = _watch(tmp_path, {"b.hl7": oru(small_ecg(seed=35), "W-1"), "c.hl7": _msh(first, 6, "20300101")}, queue)
    assert reasons["c.hl7"] is None  # the same message again: processed (a duplicate, nothing new stored)
    assert reasons["b.hl7"] and "already used for a different message" in reasons["b.hl7"]
    assert queue.counts()["received"] == 1


# -- 3. a permanent failure after AA: a "not scored" result, delivered exactly once -----------


def _segments(message: str, name: str) -> list[list[str]]:
    return [s.split("|") for s in message.split("\r") if s.startswith(name + "|")]


def _assert_not_scored(result: str, original: str, reason_part: str) -> None:
    (obr,) = _segments(result, "OBR")
    assert obr[25] == "X" and obr[20] == original  # table 0123: no results available
    obx = {f[3].split("^")[0]: f for f in _segments(result, "OBX")}
    assert obx["ORIG-MSH10"][5] == original
    assert obx["NOT-SCORED"][11] == "X" and reason_part in obx["NOT-SCORED"][5]  # table 0085
    assert not any(code.startswith("PROB-") for code in obx)  # no score of any kind
    (nte,) = _segments(result, "NTE")
    assert reason_part in nte[3]


def _wait_state(queue: DurableQueue, item_id: int, state: str, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while queue.get(item_id).state != state and time.monotonic() < deadline:
        time.sleep(0.05)
    assert queue.get(item_id).state == state


def test_a_stored_message_that_no_longer_reads_gets_a_not_scored_result_downstream_once(tmp_path, downstream):
    """No scorer at all: the permanent failure is found before scoring; the result goes out by
    the normal delivery path (outbox file, then the downstream MLLP server) and only once."""
    import time

    from lasan.integration.config import config_from_dict
    from lasan.integration.queue import IdempotencyKey
    from lasan.integration.worker import ResultWorker

    cfg = config_from_dict({"listener": {"port": 0}, "storage": {"queue_db": "q.sqlite", "outbox": "outbox"},
                            "metrics": {"enabled": False}, "retry": {"initial_s": 0.05, "max_s": 0.2},
                            "downstream": {"host": "127.0.0.1", "port": downstream.port, "timeout_s": 5}}, tmp_path)
    queue = DurableQueue(cfg.storage.queue_db)
    # Stored as it would be after an AA (e.g. by an older version whose reader took it).
    item_id = queue.enqueue(IdempotencyKey("CART", "WARD7", "GONE-1"), b"MSH|^~\\&|CART|WARD7\rOBX|1|NA|junk",
                            source="hl7", kind="hl7").item_id
    worker = ResultWorker(cfg, queue, Metrics(), Health(), poll_interval_s=0.05)
    thread = worker.start_thread()
    try:
        got = downstream.wait_for({"GONE-1"}, timeout=30)
        _wait_state(queue, item_id, "sent")
        time.sleep(0.5)  # further passes must not send it again
    finally:
        worker.stop()
        thread.join(20)
    assert len(downstream.received) == 1
    (result,) = got["GONE-1"]
    _assert_not_scored(result, "GONE-1", "stored message does not read")
    item = queue.get(item_id)
    assert item.outcome == "not_scored" and "does not read" in (item.last_error or "")
    # Its own MSH-10, the same on every attempt, and not the one a later score (after a
    # re-queue) gets: a receiver that drops repeated MSH-10s still takes that score.
    assert result.split("\r")[0].split("|")[9] == item.result_control_id == result_control_id(
        "CART", "WARD7", "GONE-1", not_scored=True) != result_control_id("CART", "WARD7", "GONE-1")
    assert (cfg.storage.outbox / f"{item.result_control_id}.hl7").read_bytes().decode() == result
    queue.close()


def _strict_repository(work) -> object:
    """A tiny model whose input contract asks for 4.5 s (the intake's default asks for 2 s; the
    build's warm-up sample is 5 s): a deployment whose served model refuses ECGs the intake
    takes. Built and served for real."""
    import torch

    from lasan.build.repository import write_repository
    from lasan.checkpoint import CheckpointInfo, save_checkpoint
    from lasan.models import LASANConfig, build_model
    from lasan.preprocessing import InputSpec

    torch.manual_seed(0)
    cfg = LASANConfig(cnn_channels=(8, 16, 16, 32), d_model=32, ff_dim=64, head_hidden=16, n_layers=2,
                      input=InputSpec(min_duration_s=4.5))
    ckpt = save_checkpoint(work / "strict.pt", build_model(cfg).eval(),
                           CheckpointInfo(data_summary={"synthetic": True, "description": "untrained strict test model"}))
    return write_repository(ckpt, work / "repo", "cpu", max_batch_size=8).path


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_an_ecg_the_served_model_refuses_after_aa_gets_one_not_scored_result(
        tmp_path, downstream, listener_process, assert_no_phi):
    import time

    from feedkit import PHI

    from lasan.build.serve import TritonServer, free_port
    from lasan.formats.sample import sample_ecg

    server = TritonServer(_strict_repository(tmp_path), grpc_port=free_port(), http_port=free_port(),
                          metrics_port=free_port(), work_dir=tmp_path / "triton", startup_timeout=300)
    with server:
        lp = listener_process(server.grpc_url, downstream.port).start()
        # 3 s: the intake takes it, the served model does not; 10 s: both do.
        short = oru(dataclasses.replace(sample_ecg(fs=250.0, duration_s=3.0, seed=40), patient=PHI), "THREE-S")
        ten = oru(small_ecg(seed=41), "TEN-S")
        answers = {}

        async def send() -> None:
            async with MLLPClient("127.0.0.1", lp.hl7_port, timeout_s=30) as client:
                for name, data in (("THREE-S", short), ("TEN-S", ten)):
                    answers[name] = parse_ack(await client.send(data)).code

        asyncio.run(send())
        assert answers == {"THREE-S": "AA", "TEN-S": "AA"}
        downstream.wait_for({"THREE-S", "TEN-S"}, timeout=120)
        time.sleep(1.5)  # a second delivery would arrive within the retry backoff
        got = downstream.by_original()
    assert len(got["THREE-S"]) == 1 and len(got["TEN-S"]) == 1  # exactly once each
    _assert_not_scored(got["THREE-S"][0], "THREE-S", "at least 4.5 s")
    assert "PROB-ARVC" in {f[3].split("^")[0] for f in _segments(got["TEN-S"][0], "OBX")}
    assert PHI.patient_id in _segments(got["THREE-S"][0], "PID")[0][3]  # filed to the right patient
    lp.terminate()
    log = lp.log_text()
    assert "worker.not_scored" in log and "at least 4.5 s" in log
    assert_no_phi(log)


def test_the_digest_ignores_what_a_resend_may_change_and_nothing_else(tmp_path):
    from lasan.hl7.encoding import read_header
    from lasan.integration.intake import hl7_digest

    def digest(data: bytes) -> str:
        return hl7_digest(data, read_header(data))

    first = oru(small_ecg(seed=36), "D-1")
    same = [b"\x0b" + first.replace(b"\r", b"\r\n") + b"\x1c\r", _msh(first, 6, "19990101"), b"\xef\xbb\xbf" + first]
    assert {digest(m) for m in same} == {digest(first)}
    changed = [_msh(first, 5, "OTHERFAC"), first.replace(b"Quillfeather", b"Quillfeathen"),
               _first_sample(first, "MDC_ECG_LEAD_V5", "7")]
    assert len({digest(m) for m in changed} | {digest(first)}) == 4
    wide = first.decode().replace("UNICODE UTF-8", "UNICODE UTF-16")
    assert digest(wide.encode("utf-16")) == digest(_msh(wide.encode(), 6, "19990101").decode().encode("utf-16"))
