"""One verdict everywhere: ``lasan inspect``, the MLLP listener (real socket), the DICOM
receiver (real association, for DICOM inputs) and the watch folder accept and refuse the
same inputs, for the same reason.

No Triton here: nothing is scored, only received. Each entry point has its own queue, so
every one of them does the whole job (no input is a duplicate of another channel's).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from feedkit import oru, small_ecg
from pydicom.data import get_testdata_file

from lasan.formats.dicom import dicom_bytes
from lasan.formats.wfdb_io import write_wfdb
from lasan.hl7.ack import parse_ack
from lasan.integration.config import DicomConfig, ListenerConfig, WatchConfig
from lasan.integration.dicom_receiver import DicomReceiver
from lasan.integration.intake import Intake
from lasan.integration.listener import MLLPListener
from lasan.integration.metrics import Health, Metrics
from lasan.integration.mllp import MLLPClient
from lasan.integration.queue import DurableQueue
from lasan.integration.watch import PROCESSED, REJECTED, WatchFolder
from lasan.leads import mdc_code
from lasan.validation import read_checked

TWELVE = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
NO_V6 = ("I", "III", "V1", "V2", "V3", "V4", "V5")


def _na(control_id: str, charset: str | None = None) -> str:
    """A 12-lead NA message as text; ``charset`` goes into MSH-18 (the caller encodes accordingly)."""
    text = oru(small_ecg(seed=len(control_id), leads=TWELVE, fs=500.0), control_id).decode("utf-8")
    return _field(text, "MSH", 17, charset) if charset is not None else text


def _field(text: str, segment: str, index: int, value: str) -> str:
    lines = text.split("\r")
    i = next(k for k, line in enumerate(lines) if line.startswith(segment))
    fields = lines[i].split("|")
    fields[index] = value
    lines[i] = "|".join(fields)
    return "\r".join(lines)


def _lead_line(text: str, code: str) -> int:
    return next(i for i, line in enumerate(text.split("\r")) if code in line)


def _hl7_corpus() -> dict[str, bytes]:
    """name -> message bytes (every one also a .hl7 file); each has its own MSH-10, so none is a re-send."""
    base = _na("BASE")
    v6 = _lead_line(base, "MDC_ECG_LEAD_V6")
    first_value = base.split("\r")[_lead_line(base, "MDC_ECG_LEAD_I^")].split("|")[5]
    nan = first_value.split("^", 2)

    def own(control_id: str, text: str = base) -> str:
        return _field(text, "MSH", 9, control_id)

    unequal = base.split("\r")
    unequal[v6] = _field(unequal[v6], "OBX", 5, unequal[v6].split("|")[5].rsplit("^", 1)[0])
    corpus: dict[str, bytes] = {
        "good_na_12.hl7": _na("NA12").encode(),
        "good_na_8.hl7": oru(small_ecg(seed=3), "NA8"),
        "good_ed.hl7": oru(small_ecg(seed=4, leads=TWELVE, fs=500.0), "ED1", style="ed"),
        "good_mv.hl7": oru(small_ecg(seed=5), "MV1", na_units="mV"),
        "charset_latin1.hl7": _na("LATIN", "8859/1").replace("Zenobia", "Zenöbia").encode("latin-1"),
        "charset_iso_ir14.hl7": _na("SJIS", "ISO IR14").replace("Zenobia", "ｾﾞﾉﾋﾞｱ").encode("shift_jis"),
        "charset_utf16.hl7": _na("U16", "UNICODE UTF-16").encode("utf-16"),
        "charset_utf32.hl7": _na("U32", "UNICODE UTF-32").encode("utf-32"),
        "charset_none.hl7": _na("NOCS", "").replace("Zenobia", "Zenöbia").encode("latin-1"),
        "charset_unknown.hl7": _na("KLING", "KLINGON").encode(),
        "charset_undecodable.hl7": _na("BADUTF").replace("Zenobia", "Zenöbia").encode("latin-1"),
        "type_adt.hl7": _field(_na("ADT1"), "MSH", 8, "ADT^A01^ADT_A01").encode(),
        "type_oru_r30.hl7": _field(_na("R30"), "MSH", 8, "ORU^R30^ORU_R30").encode(),
        "no_control_id.hl7": own("").encode(),
        "no_msh.hl7": "\r".join(base.split("\r")[1:]).encode(),
        "bad_delimiters.hl7": own("DELIM").replace("MSH|^~\\&|", "MSH|^^\\&|", 1).encode(),
        "truncated_msh.hl7": b"MSH|^~\r",
        "not_numbers.hl7": own("NAN1").replace(first_value, "x1^" + first_value, 1).encode(),
        "unequal_leads.hl7": own("UNEQ", "\r".join(unequal)).encode(),
        "no_rate.hl7": own("NORATE").replace("MDC_ATTR_SAMP_RATE", "MDC_ATTR_OTHER").replace("67981^", "1^").encode(),
        "bad_rate_units.hl7": _field(own("RATEU"), "OBX|1|NM", 6, "mmHg").encode(),
        "bad_volt_units.hl7": own("VOLTU").replace("266419^MDC_DIM_MICRO_VOLT^MDC", "mmHg").encode(),
        "no_waveform.hl7": own("NOWAVE").replace("|NA|", "|ST|").encode(),
        "duplicate_lead.hl7": own("DUPLEAD").replace(mdc_code("V6"), mdc_code("V5")).encode(),
        "nan_samples.hl7": own("NANS").replace(first_value, f"{nan[0]}^^{nan[2]}", 1).encode(),
        "missing_leads.hl7": oru(small_ecg(seed=6, leads=NO_V6), "NOV6"),
        "ed_bad_base64.hl7": _ed("EDB64", "AAA*=="),
        "ed_truncated_dicom.hl7": _ed("EDTRUNC", base64.b64encode(dicom_bytes(small_ecg(seed=7))[:3000]).decode()),
        "garbage.hl7": bytes(range(256)) * 4,
        "empty.hl7": b"",
    }
    return corpus


def _ed(control_id: str, data: str) -> bytes:
    head = _na(control_id).split("\r")[:3]
    return ("\r".join(head) + f"\rOBX|1|ED|11524-6^EKG study^LN|1|^application^DICOM^Base64^{data}||||||F\r").encode()


def _dicom_corpus() -> dict[str, bytes]:
    import pydicom

    good = dicom_bytes(small_ecg(seed=8, leads=TWELVE, fs=500.0))
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(small_ecg(seed=9, leads=TWELVE, fs=500.0))))
    del ds.WaveformSequence
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    mortara = Path(get_testdata_file("waveform_ecg.dcm")).read_bytes()
    return {
        "good_12.dcm": good,
        "good_mortara.dcm": mortara,
        "missing_leads.dcm": dicom_bytes(small_ecg(seed=10, leads=NO_V6, fs=500.0)),
        "no_waveform.dcm": buffer.getvalue(),
        "truncated.dcm": mortara[: len(mortara) // 3],
        "ct_not_ecg.dcm": Path(get_testdata_file("CT_small.dcm")).read_bytes(),
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    folder = tmp_path_factory.mktemp("corpus")
    items = {**_hl7_corpus(), **_dicom_corpus()}
    for name, data in items.items():
        (folder / name).write_bytes(data)
    return folder, items


def _inspect(folder: Path, names: list[str]) -> dict[str, tuple[str, str | None]]:
    proc = subprocess.run([sys.executable, "-m", "lasan.cli", "inspect", "--json", *(str(folder / n) for n in names)],
                          capture_output=True, text=True, timeout=300)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == len(names), proc.stderr
    return {Path(r["path"]).name: (r["verdict"], r["reason"]) for r in rows}


def _mllp(tmp_path: Path, items: dict[str, bytes]) -> dict[str, tuple[str, str | None]]:
    config = ListenerConfig(port=0)
    intake = Intake(DurableQueue(tmp_path / "mllp.sqlite"), Metrics(), Health())

    async def main():
        listener = MLLPListener(config, intake)
        port = await listener.start()
        out = {}
        try:
            for name, data in items.items():
                async with MLLPClient("127.0.0.1", port, timeout_s=30) as client:
                    ack = parse_ack(await client.send(data))
                out[name] = ("accepted", None) if ack.code == "AA" else ("refused", ack.text)
        finally:
            await listener.stop()
        return out

    return asyncio.run(asyncio.wait_for(main(), 300))


def _watch(tmp_path: Path, items: dict[str, bytes]) -> dict[str, tuple[str, str | None]]:
    folder = tmp_path / "watch"
    folder.mkdir()
    watch = WatchFolder(WatchConfig(enabled=True, folder=folder, stable_s=0),
                        Intake(DurableQueue(tmp_path / "watch.sqlite"), Metrics(), Health()))
    watch.prepare()
    for name, data in items.items():
        (folder / name).write_bytes(data)
    watch.scan_once()
    out = {}
    for name in items:
        if (folder / PROCESSED / name).exists():
            out[name] = ("accepted", None)
        else:
            out[name] = ("refused", (folder / REJECTED / f"{name}.reason.txt").read_text(encoding="utf-8").strip())
    return out


def _dicom(tmp_path: Path, items: dict[str, bytes], caplog) -> dict[str, tuple[str, str | None]]:
    import pydicom
    from pynetdicom import AE
    from pynetdicom.sop_class import GeneralECGWaveformStorage, TwelveLeadECGWaveformStorage

    receiver = DicomReceiver(DicomConfig(enabled=True, port=0, min_free_disk_mb=0),
                             Intake(DurableQueue(tmp_path / "dicom.sqlite"), Metrics(), Health()), disk_path=tmp_path)
    port = receiver.start()
    out = {}
    try:
        for name, data in items.items():
            ae = AE(ae_title="ECGCART")
            ae.add_requested_context(TwelveLeadECGWaveformStorage)
            ae.add_requested_context(GeneralECGWaveformStorage)
            assoc = ae.associate("127.0.0.1", port, ae_title="LASAN")
            assert assoc.is_established
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="lasan.integration.dicom"):
                response = assoc.send_c_store(pydicom.dcmread(io.BytesIO(data)))
            assoc.release()
            if response.Status == 0:
                out[name] = ("accepted", None)
                continue
            # The sender sees the reason's start in the Error Comment; the log line has all of it.
            (rejected,) = [r for r in caplog.records if r.getMessage() == "dicom.store_rejected"]
            reason = rejected.fields["reason"]
            assert reason.startswith(str(response.ErrorComment)), (name, response.ErrorComment)
            out[name] = ("refused", reason)
    finally:
        receiver.stop()
    return out


@pytest.mark.timeout(600)
def test_every_entry_point_gives_the_verdict_lasan_inspect_gives(corpus, tmp_path, caplog):
    folder, items = corpus
    assert len(items) >= 30
    hl7 = {n: d for n, d in items.items() if n.endswith(".hl7")}
    dicom = {n: d for n, d in items.items() if n.endswith(".dcm")}
    # DICOM objects that pydicom can read back into a data set an SCU can send.
    sendable = {n: d for n, d in dicom.items() if n not in ("truncated.dcm", "ct_not_ecg.dcm")}

    inspect = _inspect(folder, sorted(items))
    by_channel = {"mllp": _mllp(tmp_path, hl7), "watch": _watch(tmp_path, items),
                  "dicom": _dicom(tmp_path, sendable, caplog)}
    for channel, verdicts in by_channel.items():
        for name, got in verdicts.items():
            assert got == inspect[name], f"{channel} vs lasan inspect on {name}: {got} != {inspect[name]}"

    accepted = {n for n, (v, _) in inspect.items() if v == "accepted"}
    assert accepted == {"good_na_12.hl7", "good_na_8.hl7", "good_ed.hl7", "good_mv.hl7", "charset_latin1.hl7",
                        "charset_iso_ir14.hl7", "charset_utf16.hl7", "charset_utf32.hl7", "charset_none.hl7",
                        "good_12.dcm", "good_mortara.dcm"}
    # The two bugs this test was written for: ORU^R30 is refused everywhere (AR 200), and the
    # charsets lasan inspect reads are accepted by the listener.
    assert "ORU^R30" in inspect["type_oru_r30.hl7"][1]
    assert "KLINGON" in inspect["charset_unknown.hl7"][1]


def test_wfdb_records_get_the_intake_verdict_in_lasan_inspect(tmp_path):
    """WFDB (a header plus signal files) reaches no network entry point; inspect and the intake's
    steps still agree on it."""
    good = write_wfdb(small_ecg(seed=11), tmp_path / "good")
    partial = write_wfdb(small_ecg(seed=12, leads=NO_V6), tmp_path / "partial")
    verdicts = _inspect(tmp_path, [Path(good).name, Path(partial).name])
    assert verdicts[Path(good).name] == ("accepted", None)
    assert verdicts[Path(partial).name][0] == "refused" and "V6" in verdicts[Path(partial).name][1]
    read_checked(good)  # the intake's steps accept it too

