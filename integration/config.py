"""The one YAML configuration of ``lasan listen``, validated at start-up.

Every key is read through a small reader that knows its dotted path, so an error says
exactly which key is wrong (``ConfigError: listener.port: must be an integer 1-65535,
got 'abc'``). Unknown keys are errors too: a typo must not silently disable TLS.
Relative paths are resolved against the YAML file's folder. See
``configs/listener.example.yaml`` for every key with comments.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lasan.errors import ConfigError

__all__ = [
    "TLSConfig",
    "ListenerConfig",
    "DicomConfig",
    "WatchConfig",
    "TritonConfig",
    "ScoringConfig",
    "DownstreamConfig",
    "StorageConfig",
    "RetryConfig",
    "MetricsConfig",
    "LoggingConfig",
    "PacsConfig",
    "FhirConfig",
    "AppConfig",
    "load_config",
    "config_from_dict",
    "server_ssl_context",
    "client_ssl_context",
]


@dataclass(frozen=True)
class TLSConfig:
    cert_file: Path | None = None  # our certificate (server side; client side for mutual TLS)
    key_file: Path | None = None
    ca_file: Path | None = None  # CA that signs the peer's certificate
    require_client_cert: bool = False  # server side: mutual TLS


@dataclass(frozen=True)
class ListenerConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 2575
    tls: TLSConfig | None = None
    max_message_bytes: int = 16 * 1024 * 1024  # a 12-lead 10 s 500 Hz NA message is ~0.4 MB
    idle_timeout_s: float = 300.0  # close a connection this long after its last complete frame (bytes outside frames don't count)
    message_timeout_s: float = 30.0  # a message's intake (parse, validate, store) until its ACK is written
    frame_deadline_s: float = 60.0  # from a frame's first byte to its end (and the TLS handshake): a drip cannot extend it
    max_connections: int = 64  # open connections in total; more are refused (closed at once, logged)
    max_connections_per_peer: int = 16  # open connections from one IP address
    default_charset: str = "utf-8"  # used when MSH-18 is empty
    application: str = "LASAN"  # our MSH-3 in ACKs and results
    facility: str = ""  # our MSH-4


@dataclass(frozen=True)
class DicomConfig:
    enabled: bool = False
    ae_title: str = "LASAN"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed_calling_aets: tuple[str, ...] = ()  # empty = accept any calling AE title
    min_free_disk_mb: float = 500.0  # below this C-STORE answers 0xA700 (out of resources)
    require_called_aet: bool = True  # reject an association addressed to another AE title than ae_title
    max_associations: int = 10  # concurrent associations; more are rejected (local limit exceeded)
    max_associations_per_peer: int = 4  # concurrent connections from one IP address; more are closed at once
    network_timeout_s: float = 60.0  # no data at all this long: abort
    acse_timeout_s: float = 30.0  # association negotiation / release
    dimse_timeout_s: float = 30.0  # one DIMSE message
    association_deadline_s: float = 600.0  # whole association, wall clock: a drip cannot hold a slot longer


@dataclass(frozen=True)
class WatchConfig:
    enabled: bool = False
    folder: Path = Path("watch")
    poll_interval_s: float = 2.0
    stable_s: float = 2.0  # size and mtime unchanged this long before a file is taken


@dataclass(frozen=True)
class TritonConfig:
    url: str = "localhost:8001"  # gRPC; always urls[0]
    model: str = "lasan"
    timeout_s: float = 30.0
    # Every Triton this node may score on (YAML triton.urls; triton.url is the one-element list).
    urls: tuple[str, ...] = ()
    balance: str = "round_robin"  # round_robin: spread over the healthy servers | in_order: first healthy one
    reprobe_s: float = 5.0  # a server found down or not ready is skipped this long, then health-checked again

    def __post_init__(self) -> None:
        # One source of truth whichever was given: urls wins, url is its first entry.
        if self.urls:
            object.__setattr__(self, "url", self.urls[0])
        else:
            object.__setattr__(self, "urls", (self.url,))


@dataclass(frozen=True)
class ScoringConfig:
    thresholds_mode: str = "screening"  # which operating point decides the reported call
    pdf_report: bool = False  # attach the PDF report as base64 ED OBX
    concurrency: int = 4  # ECGs in flight to Triton at once


@dataclass(frozen=True)
class DownstreamConfig:
    host: str
    port: int
    tls: TLSConfig | None = None
    timeout_s: float = 30.0
    application: str = ""  # receiving application MSH-5 of results; default: the original sender
    facility: str = ""


@dataclass(frozen=True)
class StorageConfig:
    queue_db: Path = Path("var/queue.sqlite")
    outbox: Path = Path("var/outbox")
    # postgresql://user@host/db: a queue shared by several listeners (docs/queue.md); None: the SQLite file queue_db.
    queue_url: str | None = None
    # A worker's claim on an item; when its node dies, another node takes the item after this long.
    lease_s: float = 120.0
    # Delivered items (their messages and results: patient data), outbox files and watch-folder
    # processed/ and rejected/ files are deleted this many days after they finished (docs/privacy.md); 0: never.
    retention_days: float = 30.0


@dataclass(frozen=True)
class RetryConfig:
    initial_s: float = 1.0
    max_s: float = 300.0
    factor: float = 2.0


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9464
    # This listener's name on its metrics and in its queue leases; the hostname (a pod's name) by default.
    node: str = field(default_factory=socket.gethostname)


@dataclass(frozen=True)
class LoggingConfig:
    format: str = "kv"  # kv | json
    level: str = "INFO"
    file: Path | None = None  # None: stderr


@dataclass(frozen=True)
class PacsConfig:
    """Results to PACS: the SR and encapsulated PDF of every scored ECG, by C-STORE (docs/integration.md)."""

    host: str
    port: int
    called_ae: str = "PACS"  # the PACS's AE title
    calling_ae: str = "LASAN"  # ours
    timeout_s: float = 30.0  # connection, association and each C-STORE answer
    tls: TLSConfig | None = None  # DICOM TLS (PS3.15 B.1): ca_file, optional client cert/key


@dataclass(frozen=True)
class FhirConfig:
    """Results as FHIR R4 DiagnosticReport bundles: always to the outbox, POSTed when base_url is set."""

    enabled: bool = True
    base_url: str | None = None  # e.g. https://fhir.example.org/r4 ; the transaction Bundle is POSTed here
    timeout_s: float = 30.0


@dataclass(frozen=True)
class AppConfig:
    listener: ListenerConfig = field(default_factory=ListenerConfig)
    dicom: DicomConfig = field(default_factory=DicomConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    triton: TritonConfig = field(default_factory=TritonConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    downstream: DownstreamConfig | None = None
    storage: StorageConfig = field(default_factory=StorageConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    pacs: PacsConfig | None = None  # no section: no PACS delivery
    fhir: FhirConfig | None = None  # no section: no FHIR output


class _Section:
    """Reads one mapping, remembering its dotted path for error messages."""

    def __init__(self, data: Any, path: str, base: Path) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path or 'the configuration'}: must be a mapping of keys, got {type(data).__name__}")
        self.data, self.path, self.base = data, path, base
        self.used: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _get(self, key: str, default: Any) -> Any:
        self.used.add(key)
        value = self.data.get(key, default)
        return default if value is None else value

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self._key(key)}: must be true or false, got {value!r}")
        return value

    def text(self, key: str, default: str, choices: tuple[str, ...] = ()) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise ConfigError(f"{self._key(key)}: must be text, got {value!r}")
        if choices and value not in choices:
            raise ConfigError(f"{self._key(key)}: must be one of {', '.join(choices)}, got {value!r}")
        return value

    def integer(self, key: str, default: int, lo: int, hi: int) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigError(f"{self._key(key)}: must be an integer {lo}-{hi}, got {value!r}")
        return value

    def port(self, key: str, default: int) -> int:
        return self.integer(key, default, 0, 65535)  # 0: any free port (tests)

    def number(self, key: str, default: float, lo: float = 0.0) -> float:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < lo:
            raise ConfigError(f"{self._key(key)}: must be a number >= {lo:g}, got {value!r}")
        return float(value)

    def path_(self, key: str, default: Path | None, must_exist: bool = False) -> Path | None:
        value = self._get(key, default)
        if value is None:
            return None
        if not isinstance(value, (str, Path)) or not str(value):
            raise ConfigError(f"{self._key(key)}: must be a file or folder path, got {value!r}")
        path = Path(value).expanduser()
        path = path if path.is_absolute() else self.base / path
        if must_exist and not path.exists():
            raise ConfigError(f"{self._key(key)}: {path} does not exist")
        return path

    def str_list(self, key: str) -> tuple[str, ...]:
        value = self._get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{self._key(key)}: must be a list of non-empty texts, got {value!r}")
        return tuple(value)

    def section(self, key: str) -> _Section:
        self.used.add(key)
        return _Section(self.data.get(key), self._key(key), self.base)

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def done(self) -> None:
        unknown = sorted(set(map(str, self.data)) - self.used)
        if unknown:
            where = self.path or "top level"
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; check the spelling against "
                              "configs/listener.example.yaml")


def _tls(sec: _Section, key: str, server: bool) -> TLSConfig | None:
    if not sec.has(key):
        sec.used.add(key)
        return None
    t = sec.section(key)
    cfg = TLSConfig(
        cert_file=t.path_("cert_file", None, must_exist=True),
        key_file=t.path_("key_file", None, must_exist=True),
        ca_file=t.path_("ca_file", None, must_exist=True),
        require_client_cert=t.flag("require_client_cert", False),
    )
    t.done()
    if server and (cfg.cert_file is None or cfg.key_file is None):
        raise ConfigError(f"{t.path}: a TLS server needs both cert_file and key_file")
    if cfg.require_client_cert and cfg.ca_file is None:
        raise ConfigError(f"{t.path}.require_client_cert: needs ca_file to verify client certificates")
    if (cfg.cert_file is None) != (cfg.key_file is None):
        raise ConfigError(f"{t.path}: cert_file and key_file go together")
    return cfg


def _ae_title(sec: _Section, key: str, default: str) -> str:
    value = sec.text(key, default)
    if not value or len(value) > 16 or not value.isascii() or "\\" in value or value != value.strip():
        raise ConfigError(f"{sec._key(key)}: a DICOM AE title is 1-16 ASCII characters without backslash, got {value!r}")
    return value


def _pacs(top: _Section) -> PacsConfig | None:
    if not top.has("pacs"):
        top.used.add("pacs")
        return None
    s = top.section("pacs")
    if not s.has("host") or not s.has("port"):
        raise ConfigError("pacs: needs host and port (or remove the section to send no results to PACS)")
    pacs = PacsConfig(host=s.text("host", ""), port=s.port("port", 0), called_ae=_ae_title(s, "called_ae", "PACS"),
                      calling_ae=_ae_title(s, "calling_ae", "LASAN"), timeout_s=s.number("timeout_s", 30.0, 0.1),
                      tls=_tls(s, "tls", server=False))
    s.done()
    return pacs


def _fhir(top: _Section) -> FhirConfig | None:
    if not top.has("fhir"):
        top.used.add("fhir")
        return None
    s = top.section("fhir")
    base_url = s.text("base_url", "") or None
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"fhir.base_url: must be an http:// or https:// URL of the FHIR server's base, got {base_url!r}")
    fhir = FhirConfig(enabled=s.flag("enabled", True), base_url=base_url, timeout_s=s.number("timeout_s", 30.0, 0.1))
    s.done()
    return fhir if fhir.enabled else None


def config_from_dict(data: Any, base_dir: str | Path = ".") -> AppConfig:
    """Validate a parsed YAML mapping into :class:`AppConfig`.

    Raises:
        ConfigError: naming the first invalid or unknown key.
    """
    base = Path(base_dir)
    top = _Section(data, "", base)

    s = top.section("listener")
    d = ListenerConfig()
    listener = ListenerConfig(
        enabled=s.flag("enabled", d.enabled),
        host=s.text("host", d.host),
        port=s.port("port", d.port),
        tls=_tls(s, "tls", server=True),
        max_message_bytes=s.integer("max_message_bytes", d.max_message_bytes, 1024, 1 << 30),
        idle_timeout_s=s.number("idle_timeout_s", d.idle_timeout_s, 0.1),
        message_timeout_s=s.number("message_timeout_s", d.message_timeout_s, 0.1),
        frame_deadline_s=s.number("frame_deadline_s", d.frame_deadline_s, 0.1),
        max_connections=s.integer("max_connections", d.max_connections, 1, 100_000),
        max_connections_per_peer=s.integer("max_connections_per_peer", d.max_connections_per_peer, 1, 100_000),
        default_charset=s.text("default_charset", d.default_charset),
        application=s.text("application", d.application),
        facility=s.text("facility", d.facility),
    )
    try:
        "".encode(listener.default_charset)
    except LookupError:
        raise ConfigError(f"listener.default_charset: {listener.default_charset!r} is not a known character set") from None
    s.done()

    s = top.section("dicom")
    dd = DicomConfig()
    dicom = DicomConfig(
        enabled=s.flag("enabled", dd.enabled),
        ae_title=_ae_title(s, "ae_title", dd.ae_title),
        host=s.text("host", dd.host),
        port=s.port("port", dd.port),
        allowed_calling_aets=s.str_list("allowed_calling_aets"),
        min_free_disk_mb=s.number("min_free_disk_mb", dd.min_free_disk_mb),
        require_called_aet=s.flag("require_called_aet", dd.require_called_aet),
        max_associations=s.integer("max_associations", dd.max_associations, 1, 10_000),
        max_associations_per_peer=s.integer("max_associations_per_peer", dd.max_associations_per_peer, 1, 10_000),
        network_timeout_s=s.number("network_timeout_s", dd.network_timeout_s, 0.1),
        acse_timeout_s=s.number("acse_timeout_s", dd.acse_timeout_s, 0.1),
        dimse_timeout_s=s.number("dimse_timeout_s", dd.dimse_timeout_s, 0.1),
        association_deadline_s=s.number("association_deadline_s", dd.association_deadline_s, 0.1),
    )
    s.done()

    s = top.section("watch")
    wd = WatchConfig()
    watch = WatchConfig(
        enabled=s.flag("enabled", wd.enabled),
        folder=s.path_("folder", wd.folder) or wd.folder,
        poll_interval_s=s.number("poll_interval_s", wd.poll_interval_s, 0.05),
        stable_s=s.number("stable_s", wd.stable_s),
    )
    s.done()

    s = top.section("triton")
    td = TritonConfig()
    if s.has("url") and s.has("urls"):
        raise ConfigError("triton.url, triton.urls: give one of them (url is the same as a one-element urls list)")
    urls = s.str_list("urls") if s.has("urls") else (s.text("url", td.url),)
    if not urls:
        raise ConfigError("triton.urls: give at least one Triton gRPC host:port")
    triton = TritonConfig(
        model=s.text("model", td.model), timeout_s=s.number("timeout_s", td.timeout_s, 0.1), urls=urls,
        balance=s.text("balance", td.balance, ("round_robin", "in_order")),
        reprobe_s=s.number("reprobe_s", td.reprobe_s, 0.1),
    )
    key = "triton.urls" if s.has("urls") else "triton.url"
    for url in triton.urls:
        if not url or "://" in url:
            raise ConfigError(f"{key}: give host:port of Triton's gRPC endpoint (no scheme), got {url!r}")
    if len(set(triton.urls)) != len(triton.urls):
        raise ConfigError(f"{key}: give each Triton gRPC host:port once, got {list(triton.urls)!r}")
    s.done()

    s = top.section("scoring")
    sd = ScoringConfig()
    scoring = ScoringConfig(
        thresholds_mode=s.text("thresholds_mode", sd.thresholds_mode, ("screening", "confirmation")),
        pdf_report=s.flag("pdf_report", sd.pdf_report),
        concurrency=s.integer("concurrency", sd.concurrency, 1, 256),
    )
    s.done()

    downstream = None
    if top.has("downstream"):
        s = top.section("downstream")
        if not s.has("host") or not s.has("port"):
            raise ConfigError("downstream: needs host and port (or remove the section to write results only to the outbox)")
        downstream = DownstreamConfig(
            host=s.text("host", ""),
            port=s.port("port", 0),
            tls=_tls(s, "tls", server=False),
            timeout_s=s.number("timeout_s", 30.0, 0.1),
            application=s.text("application", ""),
            facility=s.text("facility", ""),
        )
        s.done()
    else:
        top.used.add("downstream")
    pacs, fhir = _pacs(top), _fhir(top)

    s = top.section("storage")
    std = StorageConfig()
    queue_url = s.text("queue_url", "") or None
    if queue_url is not None and not queue_url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"storage.queue_url: must be a postgresql:// URL, got {queue_url.split('@')[-1]!r}")
    storage = StorageConfig(
        queue_db=s.path_("queue_db", std.queue_db) or std.queue_db, outbox=s.path_("outbox", std.outbox) or std.outbox,
        queue_url=queue_url, lease_s=s.number("lease_s", std.lease_s, 1.0),
        retention_days=s.number("retention_days", std.retention_days),
    )
    s.done()

    s = top.section("retry")
    rd = RetryConfig()
    retry = RetryConfig(
        initial_s=s.number("initial_s", rd.initial_s, 0.01), max_s=s.number("max_s", rd.max_s, 0.01),
        factor=s.number("factor", rd.factor, 1.0),
    )
    if retry.max_s < retry.initial_s:
        raise ConfigError(f"retry.max_s: must be >= retry.initial_s ({retry.initial_s:g}), got {retry.max_s:g}")
    s.done()

    s = top.section("metrics")
    md = MetricsConfig()
    metrics = MetricsConfig(enabled=s.flag("enabled", md.enabled), host=s.text("host", md.host), port=s.port("port", md.port),
                            node=s.text("node", md.node))
    if not metrics.node or len(metrics.node) > 253 or any(c.isspace() for c in metrics.node):
        raise ConfigError(f"metrics.node: a node name is 1-253 characters without spaces, got {metrics.node!r}")
    s.done()

    s = top.section("logging")
    ld = LoggingConfig()
    logging_ = LoggingConfig(
        format=s.text("format", ld.format, ("kv", "json")),
        level=s.text("level", ld.level, ("DEBUG", "INFO", "WARNING", "ERROR")),
        file=s.path_("file", None),
    )
    s.done()
    top.done()

    if not (listener.enabled or dicom.enabled or watch.enabled):
        raise ConfigError("listener.enabled, dicom.enabled, watch.enabled: at least one intake must be enabled")
    return AppConfig(listener, dicom, watch, triton, scoring, downstream, storage, retry, metrics, logging_,
                     pacs=pacs, fhir=fhir)


def load_config(path: str | Path) -> AppConfig:
    """Read and validate the YAML file at ``path``.

    Raises:
        ConfigError: the file is missing, is not valid YAML, or a key is invalid (named in the message).
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration file {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    return config_from_dict(data, path.resolve().parent)


def server_ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    """An SSL context for a TLS listener (TLS 1.2+).

    Raises:
        ConfigError: the certificate or key cannot be loaded.
    """
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        if tls.ca_file:
            ctx.load_verify_locations(str(tls.ca_file))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"listener.tls: cannot load certificate/key: {exc}") from exc
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_NONE
    return ctx


def client_ssl_context(tls: TLSConfig, where: str = "downstream.tls") -> ssl.SSLContext:
    """An SSL context for connecting to a TLS peer (downstream results; ``where`` names the config key).

    Raises:
        ConfigError: the CA or client certificate cannot be loaded.
    """
    try:
        ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls.cert_file:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{where}: cannot load certificates: {exc}") from exc
    return ctx
