"""Configuration: one TOML file, ``SYNTHPACS_*`` environment variables over it, CLI flags over both.

Every setting is a field of a frozen dataclass below; its environment variable is the upper-cased path
joined by underscores (``dicom.max_pdu`` is ``SYNTHPACS_DICOM_MAX_PDU``), and the home folder is
``SYNTHPACS_HOME``. Lists and tables in the environment are written as JSON. The defaults need no outside
service: local folders under ``./var``, SQLite, the CPU when there is no GPU, the bundled demo model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

ENV_PREFIX = "SYNTHPACS_"
CONFIG_ENV = "SYNTHPACS_CONFIG"
DEFAULT_CONFIG_FILE = "synthpacs.toml"
SECRET_MASK = "********"


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the setting and where it came from."""


@dataclass(frozen=True)
class DicomPeer:
    """A remote application entity (PS3.8 §7.1): who may call us, and where we may send.

    A peer without a port may only call in; with a port it is also a C-MOVE and outbox destination.
    """

    ae_title: str
    host: str
    port: int | None = None
    # DICOM TLS (PS3.15 Annex B) to this peer as the outbox and C-MOVE SCU: the peer's certificate is
    # checked against tls_ca (empty: the system's trusted CAs) and must name tls_name (empty: host).
    tls: bool = False
    tls_ca: str = ""
    # Our client certificate for this peer (empty: dicom.tls_cert / dicom.tls_key, if any).
    tls_cert: str = ""
    tls_key: str = ""
    # The name the peer's certificate carries (subjectAltName DNS/IP or Common Name). For a caller under
    # dicom.tls_require_client_cert, empty accepts a certificate naming the peer's host or its AE title.
    tls_name: str = ""


@dataclass(frozen=True)
class DicomConfig:
    """The one DICOM application entity: Verification, Storage and Query/Retrieve on one port."""

    ae_title: str = "SYNTHPACS"
    # Loopback by default: a hospital network is opened on purpose, by configuration.
    bind: str = "127.0.0.1"
    port: int = 11112
    # Established associations at once; connections still negotiating are counted apart (below).
    max_associations: int = 16
    # 128 KiB: dcmtk-based senders (storescu, Orthanc, most PACS) never send larger PDUs whatever we
    # offer; it was the fastest size measured (bench/RESULTS.md sweep, ARCHITECTURE.md), 16 KiB is
    # clearly slower; and several fragments per radiograph let writes overlap the transfer (streaming.py).
    max_pdu: int = 131072
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    # Seconds a new connection has to complete association negotiation (TLS handshake and A-ASSOCIATE-RQ
    # included); shorter than the ACSE timeout, which bounds an established association's release
    # (service/dicom/fastpath/frontdoor.py).
    negotiation_timeout: float = 10.0
    # Connections accepted and not yet negotiated, per source host and in all; beyond either, the oldest
    # pending connection is closed, so an idle flood cannot lock listed peers out.
    max_pending_per_host: int = 8
    max_pending: int = 64
    # The TCP listen backlog: connections the kernel queues before they are accepted (Orthanc uses 50).
    listen_backlog: int = 50
    # The largest C-STORE dataset accepted (written to disk as it arrives, and held in memory until it is
    # complete); beyond it the rest is read and dropped, the C-STORE is answered 0xA700 and nothing is
    # kept. 2 GiB holds the largest radiographs. A deflated dataset is parsed in memory and may inflate to
    # 256 MiB at most (service/archive/encoded.py).
    max_dataset_bytes: int = 2 << 30
    # Any calling AE title from loopback is accepted out of the box; other hosts must be listed in peers.
    allow_loopback: bool = True
    peers: tuple[DicomPeer, ...] = ()
    # Refuse associations whose Called AE Title is not ours (dcmtk storescp --require-match).
    require_called_ae_title: bool = False
    # The receive fast path (service/dicom/fastpath/): false turns direct_receive, stream_writes and the short
    # reactor polls off together, leaving every association to pynetdicom (also off by itself outside the
    # pynetdicom releases it was tested with).
    fast_path: bool = True
    # Write each C-STORE dataset to its temporary file while it arrives (service/dicom/fastpath/streaming.py).
    stream_writes: bool = True
    # Serve storage-only associations (C-STORE, C-ECHO) straight from the socket once they are
    # established (service/dicom/fastpath/direct.py); false leaves every association to pynetdicom's reactors.
    direct_receive: bool = True
    # DICOM TLS for the SCP (PS3.15 Annex B, BCP 195 profile: TLS 1.2 or later, AEAD cipher suites).
    # With tls_cert and tls_key set, the port speaks TLS only; plain TCP callers are refused.
    tls_cert: str = ""
    tls_key: str = ""
    # CA certificates (PEM) that client certificates must chain to.
    tls_ca: str = ""
    # Callers must present a certificate signed by tls_ca; a listed AE title must present its own
    # (see DicomPeer.tls_name), so the certificate, not only the AE title and host, identifies the peer.
    tls_require_client_cert: bool = False
    # Seconds a caller has to complete the TLS handshake before its connection is closed.
    tls_handshake_timeout: float = 10.0


@dataclass(frozen=True)
class StoreConfig:
    """The training store: one file per instance and an index."""

    # What to do with a different instance that reuses a stored SOP Instance UID:
    # "keep" answers success and keeps the first copy (logged), "replace" stores the new one,
    # "reject" answers failure 0xA900-class (duplicate) and keeps the first.
    duplicate_policy: str = "keep"
    # Index database. Empty: SQLite at <home>/store/index.sqlite, for processes on one host (a lock in
    # <home>/store/.writers refuses another host). postgresql://USER:PASSWORD@HOST:PORT/DATABASE: a
    # PostgreSQL index that processes on several hosts share (with one store folder on a shared filesystem).
    index_url: str = ""
    # Largest frame we accept, in pixels (rows x columns); guards against headers claiming 65535 x 65535.
    max_pixels: int = 50_000_000
    fsync: bool = True
    # Free-space watermark of the store's file system: C-STORE is refused (0xA700) while free space is
    # below the larger of the two, so the disk never fills; it recovers by itself when space returns.
    min_free_bytes: int = 2 * 1024**3
    min_free_percent: float = 5.0


@dataclass(frozen=True)
class DeidConfig:
    """De-identification on ingest: PS3.15 Annex E Basic Application Level Confidentiality Profile."""

    enabled: bool = True
    # Key for UID remapping and pseudonyms. Empty: a random key is made once and kept in
    # <home>/secrets/deid.key (mode 0600), so re-sends map to the same UIDs across restarts.
    secret: str = ""
    # Root for remapped UIDs; "2.25" makes UUID-derived UIDs (PS3.5 §B.2) that need no registered root.
    uid_root: str = "2.25"
    # Retain options of PS3.15 Table E.1-1 that training needs.
    retain_device_identity: bool = False
    retain_patient_characteristics: bool = True  # sex and a coarse age (size and weight are removed)
    retain_longitudinal_dates: bool = False  # False: dates are shifted by a keyed per-patient offset
    # Width of the age bins kept under retain_patient_characteristics (years; under 2 years: months).
    age_bin_years: int = 5


@dataclass(frozen=True)
class DatasetConfig:
    """Dataset builds (service/data/build.py); every value is recorded in the version's dataset.json."""

    resolution: int = 256
    # How a non-square image reaches a square: "pad" keeps the whole image, "crop" fills the frame.
    fit: str = "pad"
    dtype: str = "uint8"
    # Window used when the header has no VOI LUT: percentiles of the valid pixels.
    fallback_window_percentiles: tuple[float, float] = (0.5, 99.5)
    # "header": the header's window or VOI LUT when it has one; "percentile": always the robust window.
    window: str = "header"
    # Multi-frame images: "refuse" (skipped, with the reason in the build report) or "first" frame.
    multiframe: str = "refuse"
    # Anti-aliased resampling filter: "bicubic" (Clean-FID's choice) or "lanczos" (sharper, slower).
    resample: str = "bicubic"
    # Modalities a build takes when --modality is not given (empty: every modality).
    modalities: tuple[str, ...] = ("CR", "DX")
    workers: int = 0  # 0: every core


@dataclass(frozen=True)
class TrainConfig:
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    amp: bool = True
    seed: int = 0


@dataclass(frozen=True)
class InferenceConfig:
    device: str = "auto"
    # Models loaded at start ("name" or "name:version"); others load on first request.
    preload: tuple[str, ...] = ("demo-dcgan",)
    max_loaded_models: int = 4
    max_batch: int = 32
    max_queue_delay_ms: float = 5.0
    batching: bool = True
    max_count: int = 256
    max_inflight: int = 64
    half_precision: bool = True
    # How often the registry is rescanned for new versions (seconds; 0 disables).
    reload_interval_s: float = 10.0
    # PyTorch intra-op threads for CPU inference in this process; 0 keeps PyTorch's default (one per core).
    # On a CPU shared with other work, fewer threads can be faster (README "gRPC inference").
    cpu_threads: int = 0


@dataclass(frozen=True)
class GrpcConfig:
    bind: str = "127.0.0.1"
    port: int = 50051
    tls_cert: str = ""
    tls_key: str = ""
    # With a client CA, clients must present a certificate it signed (mutual TLS).
    tls_client_ca: str = ""
    # Bearer tokens accepted in the "authorization" metadata; empty: no authentication.
    tokens: tuple[str, ...] = ()
    max_workers: int = 32


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = True
    bind: str = "127.0.0.1"
    port: int = 9108


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "json"  # json or console


@dataclass(frozen=True)
class SyntheticConfig:
    """How synthetic Secondary Capture instances are written (see service/synthetic/sc_writer.py)."""

    # Empty: UUID-derived UIDs under 2.25 (PS3.5 §B.2).
    uid_root: str = ""
    modality: str = "OT"
    # The SYNTHETIC label burned into the pixels of every study written as DICOM (stored, sent to a PACS),
    # with Burned In Annotation YES. false: the operator deliberately sends unlabelled pixels; a request
    # (gRPC GenerateStudy, synthesize) can then ask for the label, but never drop it while this is true.
    # Raw images of gRPC Generate are never labelled.
    burn_in_label: bool = True
    institution_name: str = "synthpacs"
    refuse_near_copies: bool = True
    # Where the near-copy check cannot run (no index in the model version, no training dataset here),
    # nothing is written or sent unless this is true; each instance then records near_copy_check=not-run.
    allow_unchecked: bool = False


@dataclass(frozen=True)
class OutboxConfig:
    # AE title of a peer (with a port) that synthetic studies go to; empty: keep them in our archive.
    default_destination: str = ""
    backoff_initial_s: float = 2.0
    backoff_max_s: float = 300.0
    # 0: retry forever (at-least-once delivery); otherwise give up after this many attempts.
    max_attempts: int = 0
    concurrency_per_destination: int = 2
    # Seconds between C-ECHO health checks of every destination (0: only when a send fails).
    health_interval_s: float = 60.0
    # Instances claimed per association round; larger batches keep one association busy longer.
    batch_size: int = 16


@dataclass(frozen=True)
class QueryRetrieveConfig:
    # Only synthetic studies are visible to C-FIND/C-GET/C-MOVE.
    synthetic_only: bool = False
    # Most C-FIND responses to one query (0: no limit); more matches end with a warning in the log.
    max_results: int = 10000
    # Accept a Study Root C-MOVE/C-GET at PATIENT level as "the whole patient" (Orthanc 1.10 retrieves a
    # patient that way); false refuses it with 0xA900 as PS3.4 C.6.2 has no PATIENT level in Study Root.
    lenient_patient_level_study_root: bool = True


@dataclass(frozen=True)
class DicomwebConfig:
    """The DICOMweb service (PS3.18: QIDO-RS, WADO-RS, STOW-RS) over the same store (service/dicomweb)."""

    # `synthpacs serve` starts it; `synthpacs dicomweb` runs it alone either way.
    enabled: bool = True
    # Loopback by default; another address needs grpc.tokens (the same bearer tokens) or
    # allow_unauthenticated_remote, and should have TLS.
    bind: str = "127.0.0.1"
    port: int = 8080
    # Where the services live (Orthanc's DICOMweb plugin and OHIF's examples use /dicom-web).
    root: str = "/dicom-web"
    tls_cert: str = ""
    tls_key: str = ""
    allow_unauthenticated_remote: bool = False
    # Origins a browser viewer may call from (CORS); "*" for any, empty for none.
    cors_origins: tuple[str, ...] = ()
    # Largest STOW-RS request body; larger ones are refused with 413 before or while they arrive.
    max_body_bytes: int = 1 << 30
    # QIDO-RS answers at most this many matches per request when the client sets no limit.
    default_limit: int = 1000
    # A folder holding OHIF Viewer's prebuilt bundle (`make viewer` installs it): served at /viewer,
    # configured with this server's DICOMweb root. Empty: no viewer.
    viewer_dir: str = ""


@dataclass(frozen=True)
class EvaluationConfig:
    # pytorch-fid's pt_inception-2015-12-05-6726825d.pth, provided by the operator (no downloads here).
    inception_weights: str = ""
    # Optional in-domain feature network: a TorchScript file mapping images to feature vectors.
    feature_network: str = ""
    # Its input contract: images resized to this side (0: the images' own size), 1 or 3 channels.
    feature_network_input_size: int = 0
    feature_network_input_channels: int = 3
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    batch_size: int = 32
    # Metrics at training snapshots (names as `synthpacs evaluate --metrics`; empty: none) and their sample count.
    snapshot_metrics: tuple[str, ...] = ()
    snapshot_samples: int = 1000
    # Near-copy threshold of the memorization check: this percentile of the training set's own NN distances.
    memorization_percentile: float = 1.0


@dataclass(frozen=True)
class Config:
    home: str = "./var"
    dicom: DicomConfig = field(default_factory=DicomConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    deid: DeidConfig = field(default_factory=DeidConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    grpc: GrpcConfig = field(default_factory=GrpcConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    qr: QueryRetrieveConfig = field(default_factory=QueryRetrieveConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    dicomweb: DicomwebConfig = field(default_factory=DicomwebConfig)

    @property
    def home_path(self) -> Path:
        return Path(self.home).expanduser().resolve()

    def peer(self, ae_title: str) -> DicomPeer | None:
        for peer in self.dicom.peers:
            if peer.ae_title == ae_title:
                return peer
        return None


# Settings whose values never appear in `config show` or logs.
SECRET_FIELDS = frozenset({"deid.secret", "grpc.tokens"})

_VALID_CHOICES: dict[str, tuple[str, ...]] = {
    "store.duplicate_policy": ("keep", "replace", "reject"),
    "dataset.fit": ("pad", "crop"),
    "dataset.dtype": ("uint8", "uint16"),
    "log.level": ("debug", "info", "warning", "error"),
    "log.format": ("json", "console"),
}


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the effective configuration.

    ``path``: a TOML file; when None, ``$SYNTHPACS_CONFIG`` or ``./synthpacs.toml`` if either exists.
    ``env``: the environment (``os.environ`` when None). ``overrides``: dotted keys from CLI flags,
    e.g. ``{"dicom.port": 4242}``; None values are ignored so unset flags do not override.
    """
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is None:
        path = env.get(CONFIG_ENV) or (DEFAULT_CONFIG_FILE if Path(DEFAULT_CONFIG_FILE).exists() else None)
    if path is not None:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"configuration file {p} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration file {p} is not valid TOML: {exc}") from None
        source = str(p)
    cfg = _build(Config, raw, source, ())
    for dotted, value in _env_values(env).items():
        cfg = _replace(cfg, dotted, value, f"environment variable {_env_name(dotted)}")
    for dotted, value in (overrides or {}).items():
        if value is not None:
            cfg = _replace(cfg, dotted, value, "command line")
    _validate(cfg)
    return cfg


def iter_fields(cls: type = Config, prefix: tuple[str, ...] = ()):
    """Yield (dotted path, type) of every leaf setting."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from iter_fields(tp, prefix + (f.name,))
        else:
            yield ".".join(prefix + (f.name,)), tp


def as_dict(cfg: Config, mask_secrets: bool = True) -> dict[str, Any]:
    """The configuration as plain data, secrets masked (for `synthpacs config show`)."""
    data = dataclasses.asdict(cfg)
    if mask_secrets:
        for dotted in SECRET_FIELDS:
            section, key = dotted.split(".")
            value = data[section][key]
            if value:
                data[section][key] = [SECRET_MASK] * len(value) if isinstance(value, (list, tuple)) else SECRET_MASK
        if data["store"]["index_url"]:
            data["store"]["index_url"] = redact_url(data["store"]["index_url"])
    return _plain(data)


def redact_url(url: str) -> str:
    """A URL (store.index_url) with its password masked and its query (which may hold one) left out."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url.strip())
        password = parts.password
    except ValueError:
        return SECRET_MASK
    netloc = parts.netloc
    if password is not None:
        netloc = f"{parts.username or ''}:{SECRET_MASK}@{netloc.rsplit('@', 1)[1]}"
    return urlunsplit(parts._replace(netloc=netloc, query=""))


def to_toml(data: Mapping[str, Any]) -> str:
    """Render a configuration dictionary as TOML (the inverse of what load_config reads)."""
    top = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    out = top + [""] if top else []
    for section, values in data.items():
        if not isinstance(values, dict):
            continue
        scalars = {k: v for k, v in values.items() if not _is_table_list(v)}
        out.append(f"[{section}]")
        out += [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
        out.append("")
        for k, v in values.items():
            if _is_table_list(v):
                for item in v:
                    out.append(f"[[{section}.{k}]]")
                    out += [f"{ik} = {_toml_value(iv)}" for ik, iv in item.items() if iv is not None]
                    out.append("")
    return "\n".join(out)


def _is_table_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(i, dict) for i in v)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(i) for i in v) + "]"
    if v is None:
        return '""'
    raise TypeError(f"cannot render {type(v).__name__} as TOML")


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _env_name(dotted: str) -> str:
    return ENV_PREFIX + dotted.replace(".", "_").upper()


def _env_values(env: Mapping[str, str]) -> dict[str, str]:
    known = {_env_name(d): d for d, _ in iter_fields()}
    return {known[k]: v for k, v in env.items() if k in known}


def _build(cls: type, raw: Mapping[str, Any], source: str, prefix: tuple[str, ...]) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{'.'.join(prefix) or 'configuration'} in {source} must be a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        where = ".".join(prefix) or "top level"
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)} in {where} of {source}; known: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in raw.items():
        tp = hints[name]
        dotted = ".".join(prefix + (name,))
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, source, prefix + (name,))
        else:
            kwargs[name] = _coerce(value, tp, dotted, source)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{'.'.join(prefix) or 'configuration'} in {source}: {exc}") from None


def _replace(cfg: Any, dotted: str, value: Any, source: str) -> Any:
    head, _, rest = dotted.partition(".")
    hints = typing.get_type_hints(type(cfg))
    if head not in hints:
        raise ConfigError(f"unknown setting {dotted!r} from {source}")
    if rest:
        return dataclasses.replace(cfg, **{head: _replace(getattr(cfg, head), rest, value, source)})
    return dataclasses.replace(cfg, **{head: _coerce(value, hints[head], dotted, source)})


def _coerce(value: Any, tp: Any, dotted: str, source: str) -> Any:
    """Turn a TOML, environment or CLI value into the field's type, or say clearly why not."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    try:
        if origin in (types.UnionType, typing.Union):
            if value is None or value == "":
                if type(None) in args:
                    return None
            inner = [a for a in args if a is not type(None)][0]
            return _coerce(value, inner, dotted, source)
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if tp is int:
            if isinstance(value, bool):
                raise ValueError("expected an integer")
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError("expected a number")
            return float(value)
        if tp is str:
            if not isinstance(value, (str, int, float)):
                raise ValueError("expected a string")
            return str(value)
        if origin is tuple:
            if isinstance(value, str):
                value = json.loads(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
            if not isinstance(value, (list, tuple)):
                raise ValueError("expected a list")
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(v, args[0], dotted, source) for v in value)
            if len(args) != len(value):
                raise ValueError(f"expected {len(args)} values")
            return tuple(_coerce(v, a, dotted, source) for v, a in zip(value, args))
        if dataclasses.is_dataclass(tp):
            if isinstance(value, tp):
                return value
            if isinstance(value, str):
                value = json.loads(value)
            return _build(tp, value, source, tuple(dotted.split(".")))
    except ConfigError:
        raise
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"setting {dotted} from {source}: cannot use {value!r} ({exc})") from None
    raise ConfigError(f"setting {dotted}: unsupported type {tp}")


def _validate(cfg: Config) -> None:
    for dotted, choices in _VALID_CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value not in choices:
            raise ConfigError(f"setting {dotted} is {value!r}; choose one of {', '.join(choices)}")
    ae = cfg.dicom.ae_title
    if not ae or len(ae) > 16 or ae != ae.strip() or "\\" in ae:
        raise ConfigError(f"dicom.ae_title {ae!r} is not a valid AE title (1-16 characters, no backslash, PS3.5 §6.2)")
    for port_key in ("dicom.port", "grpc.port", "metrics.port", "dicomweb.port"):
        section, key = port_key.split(".")
        port = getattr(getattr(cfg, section), key)
        if not 0 <= port <= 65535:
            raise ConfigError(f"setting {port_key} is {port}; a TCP port is 0-65535 (0 picks a free one)")
    if cfg.dicom.negotiation_timeout <= 0:
        raise ConfigError("dicom.negotiation_timeout must be more than 0 seconds")
    if min(cfg.dicom.max_associations, cfg.dicom.max_pending_per_host, cfg.dicom.max_pending, cfg.dicom.listen_backlog) < 1:
        raise ConfigError("dicom.max_associations, max_pending_per_host, max_pending and listen_backlog must be at least 1")
    if cfg.dicom.max_dataset_bytes < 1024:
        raise ConfigError("dicom.max_dataset_bytes must be at least 1024 bytes")
    if cfg.dicom.max_pdu != 0 and cfg.dicom.max_pdu < 4096:
        raise ConfigError("dicom.max_pdu must be 0 (unlimited) or at least 4096 bytes")
    seen = set()
    for peer in cfg.dicom.peers:
        if peer.ae_title in seen:
            raise ConfigError(f"dicom.peers lists AE title {peer.ae_title!r} twice")
        seen.add(peer.ae_title)
    _validate_tls(cfg)
    _validate_index_url(cfg)
    if cfg.store.min_free_bytes < 0 or not 0 <= cfg.store.min_free_percent < 100:
        raise ConfigError("store.min_free_bytes must be >= 0 and store.min_free_percent 0-99.9")
    dest = cfg.outbox.default_destination
    if dest:
        peer = cfg.peer(dest)
        if peer is None or peer.port is None:
            raise ConfigError(f"outbox.default_destination {dest!r} must be a dicom.peers entry with a port")
    if bool(cfg.dicomweb.tls_cert) != bool(cfg.dicomweb.tls_key):
        raise ConfigError("dicomweb.tls_cert and dicomweb.tls_key must be set together")
    if cfg.dicomweb.max_body_bytes < 1:
        raise ConfigError("dicomweb.max_body_bytes must be at least 1")
    if not cfg.dicomweb.root.startswith("/"):
        raise ConfigError(f"dicomweb.root {cfg.dicomweb.root!r} must start with '/'")
    if cfg.inference.max_batch < 1 or cfg.inference.max_count < 1 or cfg.inference.max_inflight < 1:
        raise ConfigError("inference.max_batch, max_count and max_inflight must be at least 1")


def _validate_index_url(cfg: Config) -> None:
    """store.index_url: empty (SQLite in the home folder) or a PostgreSQL URL (service/archive/backends.py).

    Only the URL's scheme is named in a message: the rest may carry a password.
    """
    from urllib.parse import urlsplit

    url = cfg.store.index_url.strip()
    if not url:
        return
    scheme = url.split("://", 1)[0] + "://..." if "://" in url else "a value"
    try:
        parts = urlsplit(url)
        parts.port  # a port that is not a number raises here
    except ValueError:
        raise ConfigError(f"store.index_url ({scheme}) is not a valid URL; write postgresql://USER:PASSWORD@HOST:PORT/DATABASE") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(
            f"store.index_url is set ({scheme}), but the only index it can name is PostgreSQL "
            "(postgresql://USER:PASSWORD@HOST:PORT/DATABASE); leave it empty for the SQLite index in the home folder "
            f"({Path(cfg.home) / 'store' / 'index.sqlite'})"
        )
    if not (parts.path.strip("/") or "dbname=" in parts.query):
        raise ConfigError("store.index_url names no database: write postgresql://USER:PASSWORD@HOST:PORT/DATABASE")


def _validate_tls(cfg: Config) -> None:
    """TLS settings that cannot work together (the files themselves are read when a context is built)."""
    d = cfg.dicom
    if bool(d.tls_cert) != bool(d.tls_key):
        raise ConfigError("dicom.tls_cert and dicom.tls_key go together: set both (TLS on) or neither (TLS off)")
    if (d.tls_ca or d.tls_require_client_cert) and not d.tls_cert:
        raise ConfigError("dicom.tls_ca and dicom.tls_require_client_cert need dicom.tls_cert and dicom.tls_key (the SCP's own certificate)")
    if d.tls_require_client_cert and not d.tls_ca:
        raise ConfigError("dicom.tls_require_client_cert needs dicom.tls_ca: the CA certificates client certificates must chain to")
    if d.tls_handshake_timeout <= 0:
        raise ConfigError("dicom.tls_handshake_timeout must be more than 0 seconds")
    for peer in d.peers:
        if bool(peer.tls_cert) != bool(peer.tls_key):
            raise ConfigError(f"dicom.peers {peer.ae_title!r}: tls_cert and tls_key go together")
        if not peer.tls and (peer.tls_ca or peer.tls_cert):
            raise ConfigError(f"dicom.peers {peer.ae_title!r}: tls_ca/tls_cert are set but tls is false; set tls = true to use them")
