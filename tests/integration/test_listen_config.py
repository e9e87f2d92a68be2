"""Config validation: every error names the key that is wrong."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from lasan.errors import ConfigError
from lasan.integration.config import AppConfig, config_from_dict, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "listener.example.yaml"


def test_example_config_is_valid_and_paths_resolve_against_its_folder():
    cfg = load_config(EXAMPLE)
    assert isinstance(cfg, AppConfig)
    assert cfg.listener.port == 2575 and cfg.scoring.thresholds_mode == "screening"
    assert cfg.storage.queue_db == EXAMPLE.parent / "var" / "queue.sqlite"
    assert cfg.downstream is not None and cfg.downstream.port == 2576
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.listener.port = 1  # type: ignore[misc]


def test_defaults_from_an_empty_mapping():
    cfg = config_from_dict({}, "/srv/lasan")
    assert cfg.downstream is None and cfg.listener.enabled and not cfg.dicom.enabled


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"listener": {"port": "abc"}}, "listener.port"),
        ({"listener": {"port": 70000}}, "listener.port"),
        ({"listener": {"prot": 2575}}, "listener: unknown key(s) prot"),
        ({"listner": {}}, "top level: unknown key(s) listner"),
        ({"scoring": {"thresholds_mode": "sensitive"}}, "scoring.thresholds_mode"),
        ({"dicom": {"ae_title": "A_TITLE_MUCH_TOO_LONG"}}, "dicom.ae_title"),
        ({"dicom": {"allowed_calling_aets": "CART"}}, "dicom.allowed_calling_aets"),
        ({"downstream": {"host": "emr"}}, "downstream"),
        ({"triton": {"url": "http://localhost:8001"}}, "triton.url"),
        ({"listener": {"tls": {"cert_file": "missing.crt", "key_file": "missing.key"}}}, "listener.tls.cert_file"),
        ({"listener": {"enabled": "yes"}}, "listener.enabled"),
        ({"listener": {"default_charset": "klingon"}}, "listener.default_charset"),
        ({"retry": {"initial_s": 10, "max_s": 1}}, "retry.max_s"),
        ({"listener": {"enabled": False}}, "at least one intake"),
        ({"logging": {"format": "xml"}}, "logging.format"),
        (["not", "a", "mapping"], "must be a mapping"),
    ],
)
def test_errors_name_the_key(data, key):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, ".")
    assert key in str(info.value)


def test_tls_needs_cert_and_key(tmp_path):
    (tmp_path / "s.crt").write_text("x")
    with pytest.raises(ConfigError, match="listener.tls: a TLS server needs both"):
        config_from_dict({"listener": {"tls": {"cert_file": "s.crt"}}}, tmp_path)


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("listener: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    ok = tmp_path / "ok.yaml"
    ok.write_text(yaml.safe_dump({"storage": {"queue_db": "q.sqlite"}}))
    assert load_config(ok).storage.queue_db == tmp_path / "q.sqlite"


def test_lasan_listen_check_and_config_error_exit_codes(tmp_path):
    import subprocess
    import sys

    ok = subprocess.run([sys.executable, "-m", "lasan.cli", "listen", "--config", str(EXAMPLE), "--check"],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "configuration is valid" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("listener:\n  port: 99999\n")
    err = subprocess.run([sys.executable, "-m", "lasan.cli", "listen", "--config", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert err.returncode == 1 and "listener.port" in err.stderr
