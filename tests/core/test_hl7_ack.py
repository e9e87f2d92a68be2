"""ACK content: MSA-1/MSA-2, ERR with table 0357 codes from the error classes, fallback for broken MSH."""

from __future__ import annotations

import pytest
from hl7apy.parser import parse_message

from lasan.errors import HL7DelimiterError, HL7HeaderError, HL7RequiredFieldError, protocol_answer
from lasan.hl7.ack import AA, AE, AR, build_ack, parse_ack
from lasan.hl7.encoding import read_header as read_msh
from lasan.validation import check_header

ORU = "MSH|^~\\&|CART|WARD 3|LASAN|HOSP|20240101120000||ORU^R01^ORU_R01|MSG-0042|P|2.5.1||||||8859/1\rPID|1\r"


def test_read_msh_fields():
    h = read_msh(ORU)
    assert (h.sending_application, h.sending_facility, h.control_id) == ("CART", "WARD 3", "MSG-0042")
    assert (h.message_code, h.version, h.charset) == ("ORU^R01", "2.5.1", "8859/1")


def test_aa_echoes_control_id_and_swaps_sender():
    ack = build_ack(read_msh(ORU), AA, application="LASAN", facility="CARDIO")
    m = parse_message(ack, find_groups=False)
    assert m.msa.msa_1.value == "AA" and m.msa.msa_2.value == "MSG-0042"
    assert m.msh.msh_5.value == "CART" and m.msh.msh_6.value == "WARD 3"
    assert m.msh.msh_3.value == "LASAN" and m.msh.msh_9.value == "ACK^R01^ACK"
    assert m.msh.msh_18.value == "8859/1"
    assert "ERR" not in [s.name for s in m.children]
    info = parse_ack(ack)
    assert (info.code, info.control_id) == ("AA", "MSG-0042")


def test_ae_has_err_with_table_0357_code_and_reason_escaped():
    reason = "leads differ in length: V1 has 4999 | I has 5000 samples"
    ack = build_ack(read_msh(ORU), AE, error_code="102", reason=reason)
    m = parse_message(ack, find_groups=False)
    assert m.msa.msa_1.value == "AE" and m.msa.msa_2.value == "MSG-0042"
    assert m.err.err_3.value == "102^Data type error^HL70357"
    assert m.err.err_4.value == "E"
    info = parse_ack(ack)
    assert info.code == "AE" and info.text == reason  # the | survived escaping


def test_older_version_uses_err_1():
    old = ORU.replace("|2.5.1|", "|2.3|")
    ack = build_ack(read_msh(old), AR, error_code="200", reason="not supported")
    err = [s for s in ack.split("\r") if s.startswith("ERR")][0]
    assert "200&Unsupported message type&HL70357" in err
    assert parse_ack(ack).code == "AR"


def test_no_msh_gets_minimal_ar():
    with pytest.raises(HL7HeaderError) as info:
        read_msh("PID|1||123\r")
    assert protocol_answer(info.value).hl7_ack == "AR" and protocol_answer(info.value).hl7_error_code == "100"
    ack = build_ack(None, AR, error_code="100", reason=str(info.value))
    parsed = parse_ack(ack)
    assert parsed.code == "AR" and parsed.control_id == "" and "MSH" in parsed.text
    assert "ERR|||100^Segment sequence error^HL70357|E" in ack


@pytest.mark.parametrize("msh", ["MSH|^~|A|B", "MSH|abcd|A|B|", "MSH|^^\\&|A", "MSHA^~\\&A"])
def test_wrong_encoding_characters_are_rejected(msh):
    with pytest.raises(HL7DelimiterError) as info:
        read_msh(msh + "\rPID|1\r")
    assert protocol_answer(info.value).hl7_ack == "AR" and protocol_answer(info.value).hl7_error_code == "102"


def test_missing_control_id():
    with pytest.raises(HL7RequiredFieldError, match="MSH-10") as info:
        check_header(read_msh("MSH|^~\\&|A|B|C|D|2024||ORU^R01||P|2.5\r"))
    assert (protocol_answer(info.value).hl7_ack, protocol_answer(info.value).hl7_error_code) == ("AE", "101")


def test_unusable_field_values_fall_back_to_a_hand_built_ack():
    weird = ORU.replace("|2.5.1|", "|9.9|").replace("CART", "C" * 300)
    ack = build_ack(read_msh(weird), AE, reason="x")
    assert parse_ack(ack).control_id == "MSG-0042"


@pytest.mark.parametrize("version", ["2.5", "2.5.1", "2.6", "2.7", "2.8"])
@pytest.mark.parametrize("code", [AA, AE, AR])
def test_acks_pass_hl7apy_strict_validation(version, code):
    from hl7apy.consts import VALIDATION_LEVEL

    header = read_msh(ORU.replace("|2.5.1|", f"|{version}|"))
    ack = build_ack(header, code, error_code=None if code == AA else "102", reason=None if code == AA else "a | b")
    message = parse_message(ack, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    message.validate()
    info = parse_ack(ack)
    assert (info.code, info.control_id, info.text) == (code, "MSG-0042", "" if code == AA else "a | b")
