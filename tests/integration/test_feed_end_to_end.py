"""HL7 (NA and ED) and DICOM in, result ORU^R01 out, against a real Triton server.

The listener runs in-process here (real sockets on loopback, real Triton, real SQLite);
the process-level tests (SIGKILL, logs) are in test_feed_resilience.py.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import json
import subprocess
import sys
import urllib.request

import pytest
from feedkit import msh10, obx_values, oru, result_probabilities, small_ecg

from lasan.hl7.ack import parse_ack
from lasan.integration.cli import IntegrationApp
from lasan.integration.config import config_from_dict
from lasan.integration.mllp import MLLPClient

pytestmark = pytest.mark.slow

# Served numbers are compared with a tolerance, never exactly: dynamic batching changes the
# batch composition, and float32 kernels (AVX-512/AMX on a Xeon) then differ in the last
# bits (~2e-7 observed). The digits a result carries are exactly the score object's: see
# tests/core/test_hl7_result.py, which checks that in process.
PROB_ATOL = 1e-5


def _close(got: dict[str, float], want: dict[str, float], atol: float = PROB_ATOL) -> bool:
    return got.keys() == want.keys() and all(abs(got[k] - want[k]) <= atol for k in want)


def _config(tmp_path, triton_url, downstream_port, **sections):
    data = {
        "listener": {"port": 0},
        "triton": {"url": triton_url, "timeout_s": 10},
        "downstream": {"host": "127.0.0.1", "port": downstream_port, "timeout_s": 5},
        "storage": {"queue_db": "q.sqlite", "outbox": "outbox"},
        "retry": {"initial_s": 0.2, "max_s": 1.0},
        "metrics": {"port": 0},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return config_from_dict(data, tmp_path)


def _direct_scores(url, records):
    from lasan.client.api import TritonScorer

    with TritonScorer(url) as scorer:
        return [scorer.score(r) for r in records]


async def _until(condition, timeout: float = 30.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


def _http_get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return resp.read().decode()


async def _send_all(port, messages):
    async with MLLPClient("127.0.0.1", port, timeout_s=30) as client:
        return [parse_ack(await client.send(m)) for m in messages]


@pytest.mark.parametrize("style", ["na", "ed"])
def test_hl7_in_result_out_matches_direct_scoring(style, tmp_path, triton_server, downstream):
    from lasan.hl7.oru import parse_oru

    records = [small_ecg(seed=s, leads=("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"),
                         fs=500.0) for s in (1, 2)]
    messages = [oru(r, f"{style.upper()}-{i}", style=style) for i, r in enumerate(records)]
    # The ED style also asks for the PDF report in an ED OBX.
    cfg = _config(tmp_path, triton_server.grpc_url, downstream.port, scoring={"pdf_report": style == "ed"})

    async def main():
        app = IntegrationApp(cfg)
        ports = await app.start()
        try:
            acks = await _send_all(ports["hl7"], messages)
            got = await asyncio.to_thread(downstream.wait_for, {a.control_id for a in acks}, 60)
            await _until(lambda: app.queue.counts()["sent"] == 2)
            metrics_text = await asyncio.to_thread(_http_get, ports["metrics"], "/metrics")
            health = await asyncio.to_thread(_http_get, ports["metrics"], "/health")
            return acks, got, metrics_text, health
        finally:
            await app.stop()

    acks, got, metrics_text, health = asyncio.run(main())
    assert [(a.code, a.control_id) for a in acks] == [("AA", f"{style.upper()}-0"), ("AA", f"{style.upper()}-1")]
    # Score the very records the messages carry, straight through the client...
    direct = _direct_scores(triton_server.grpc_url, [parse_oru(m).record for m in messages])
    # ...and with `lasan score --json` on the same messages written to files.
    files = []
    for i, m in enumerate(messages):
        files.append(tmp_path / f"ecg-{i}.hl7")
        files[-1].write_bytes(m)
    proc = subprocess.run(
        [sys.executable, "-m", "lasan.cli", "score", *map(str, files), "--url", triton_server.grpc_url, "--json",
         "--no-progress"], capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    cli_scores = [json.loads(line)["probabilities"] for line in proc.stdout.splitlines() if line.startswith("{")]
    for i, score in enumerate(direct):
        (result,) = got[f"{style.upper()}-{i}"]
        probs = result_probabilities(result)
        assert _close(probs, {c.upper(): p for c, p in score.probabilities.items()})
        assert _close(probs, {c.upper(): p for c, p in cli_scores[i].items()})
        pdf = [seg for seg in result.split("\r") if "REPORT-PDF" in seg]
        if style == "ed":
            (seg,) = pdf
            data = seg.split("|")[5].split("^")
            assert data[1:4] == ["application", "pdf", "Base64"]
            assert base64.b64decode(data[4]).startswith(b"%PDF")
        else:
            assert pdf == []
        values = obx_values(result)
        assert values["MODEL"].endswith(score.model_version)
        lead_imp = {c[len("LEADIMP-"):]: float(v) for c, v in values.items() if c.startswith("LEADIMP-")}
        assert _close(lead_imp, {lead.upper(): w for lead, w in score.lead_importance.items()})
        # The result goes back to the original order and patient.
        obr = [s for s in result.split("\r") if s.startswith("OBR")][0].split("|")
        assert obr[2] == f"PL-{style.upper()}-{i}" and obr[3] == f"FI-{style.upper()}-{i}"
        assert "MRN7730419" in [s for s in result.split("\r") if s.startswith("PID")][0]
        assert (tmp_path / "outbox" / f"{msh10(result)}.hl7").read_bytes().decode("utf-8") == result
    assert 'lasan_acks_total{code="AA"} 2.0' in metrics_text
    assert "lasan_results_sent_total 2.0" in metrics_text
    assert "lasan_scoring_latency_seconds_count 2.0" in metrics_text
    assert '"triton_reachable": true' in health


def test_dicom_c_store_in_result_out(tmp_path, triton_server, downstream):
    from pydicom import dcmread
    from pydicom.uid import generate_uid
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage, TwelveLeadECGWaveformStorage, Verification

    from lasan.formats.dicom import dicom_bytes, read_dicom

    record = small_ecg(seed=5, leads=("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"),
                       fs=500.0)
    raw = dicom_bytes(record)
    ds = dcmread(io.BytesIO(raw))
    uid = str(ds.SOPInstanceUID)
    cfg = _config(tmp_path, triton_server.grpc_url, downstream.port,
                  dicom={"enabled": True, "port": 0, "allowed_calling_aets": ["ECGCART"]})

    def scu(calling: str, contexts, action):
        ae = AE(ae_title=calling)
        for c in contexts:
            ae.add_requested_context(c)
        assoc = ae.associate("127.0.0.1", ports["dicom"], ae_title="LASAN")
        if not assoc.is_established:
            return "rejected" if assoc.is_rejected else "aborted"
        try:
            return action(assoc)
        finally:
            assoc.release()

    async def main():
        nonlocal ports
        app = IntegrationApp(cfg)
        ports = await app.start()
        try:
            echo = await asyncio.to_thread(scu, "ECGCART", [Verification], lambda a: a.send_c_echo().Status)
            stored = await asyncio.to_thread(scu, "ECGCART", [TwelveLeadECGWaveformStorage],
                                             lambda a: a.send_c_store(ds).Status)
            again = await asyncio.to_thread(scu, "ECGCART", [TwelveLeadECGWaveformStorage],
                                            lambda a: a.send_c_store(ds).Status)
            stranger = await asyncio.to_thread(scu, "INTRUDER", [Verification], lambda a: a.send_c_echo().Status)

            def ct(assoc):
                ctx = [c for c in assoc.accepted_contexts if c.abstract_syntax == CTImageStorage]
                return "accepted" if ctx else "refused"

            ct_state = await asyncio.to_thread(scu, "ECGCART", [CTImageStorage, Verification], ct)
            got = await asyncio.to_thread(downstream.wait_for, {uid}, 60)
            await _until(lambda: app.queue.counts()["sent"] == 1)
            # Disk below threshold: the next C-STORE is refused with 0xA700.
            app.dicom.config = type(app.dicom.config)(**{**app.dicom.config.__dict__, "min_free_disk_mb": 1e12})
            ds2 = copy.deepcopy(ds)
            ds2.SOPInstanceUID = generate_uid()
            low = await asyncio.to_thread(scu, "ECGCART", [TwelveLeadECGWaveformStorage],
                                          lambda a: a.send_c_store(ds2).Status)
            return echo, stored, again, stranger, ct_state, got, low, app.queue.counts()
        finally:
            await app.stop()

    ports: dict = {}
    echo, stored, again, stranger, ct_state, got, low, counts = asyncio.run(main())
    assert (echo, stored, again) == (0x0000, 0x0000, 0x0000)
    assert stranger == "rejected" and ct_state == "refused" and low == 0xA700
    assert counts["sent"] == 1 and sum(counts.values()) == 1  # the duplicate C-STORE was not queued again
    (result,) = got[uid]
    (direct,) = _direct_scores(triton_server.grpc_url, [read_dicom(raw)])
    assert _close(result_probabilities(result), {c.upper(): p for c, p in direct.probabilities.items()})
    pid = [s for s in result.split("\r") if s.startswith("PID")][0]
    assert "MRN7730419" in pid and "Quillfeather" in pid and "19431207" in pid


def _count_calls(monkeypatch, module, name: str, calls: list) -> None:
    """Count calls of ``module.name`` wherever it was imported by name (every loaded lasan module)."""
    original = getattr(module, name)

    def counting(*args, **kwargs):
        calls.append(args[0] if args else None)
        return original(*args, **kwargs)

    for mod in [m for n, m in sys.modules.items() if n.startswith("lasan") and m is not None]:
        if getattr(mod, name, None) is original:
            monkeypatch.setattr(mod, name, counting)


def test_one_message_is_read_once_from_bytes_to_ack_and_result(tmp_path, triton_server, downstream, monkeypatch):
    """MSH read once, the bytes decoded once, the waveform split once, for ACK and result together."""
    import lasan.hl7.encoding as encoding
    import lasan.hl7.oru as oru_module
    import lasan.integration.stages  # noqa: F401 - loaded before patching, so its imports are counted too

    message = oru(small_ecg(seed=9), "ONCE-1")
    headers, decodes, parses, splits = [], [], [], []
    _count_calls(monkeypatch, encoding, "read_header", headers)
    _count_calls(monkeypatch, encoding, "decode_message", decodes)
    _count_calls(monkeypatch, oru_module, "parse_oru", parses)
    _count_calls(monkeypatch, oru_module, "_na_record", splits)
    cfg = _config(tmp_path, triton_server.grpc_url, downstream.port)

    async def main():
        app = IntegrationApp(cfg)
        ports = await app.start()
        try:
            (ack,) = await _send_all(ports["hl7"], [message])
            got = await asyncio.to_thread(downstream.wait_for, {"ONCE-1"}, 60)
            await _until(lambda: app.queue.counts()["sent"] == 1)
            return ack, got
        finally:
            await app.stop()

    ack, got = asyncio.run(main())
    assert ack.code == "AA" and result_probabilities(got["ONCE-1"][0])
    ours = [h for h in headers if h == message]  # the test's own reads of ACKs and results are not counted
    assert len(ours) == 1, f"MSH of the message read {len(ours)} times"
    assert [d for d in decodes if d == message] == [message]
    assert len(parses) == 1 and len(splits) == 1
