"""One configuration for every actor: built-in defaults < config file < environment.

The file is TOML (``rswarm.toml`` at the repository root, or the path in ``RSWARM_CONFIG``).
Every key can be overridden from the environment as ``RSWARM_<SECTION>_<KEY>`` (upper case),
plus three well-known names: ``MONGO_URI``, ``RSWARM_API_TOKEN`` and ``RSWARM_RUN_DIR``.
Everything defaults to loopback; nothing is hard-coded elsewhere.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A config file or environment value is invalid; the message names the key."""


@dataclass
class MongoConfig:
    uri: str = ""  # empty: Management.py starts the embedded SecantusDB server
    database: str = "rswarm"
    embedded_host: str = "127.0.0.1"
    embedded_port: int = 27117
    timeout_seconds: float = 5.0
    embedded_auth: bool = True  # SCRAM-SHA-256 users per role (docs/security.md); forced on off loopback
    tls_ca_file: str = ""  # clients verify the server's certificate against it (and use TLS)
    tls_cert_file: str = ""  # the embedded server's certificate chain (PEM); with tls_key_file: TLS on
    tls_key_file: str = ""


@dataclass
class FrontEndConfig:
    host: str = "127.0.0.1"
    port: int = 5001
    workers: int = 2
    threads: int = 8
    max_body_bytes: int = 1_048_576
    max_tasks_per_job: int = 256
    default_mem_limit: str = "128m"
    volume_root: str = ""  # empty: <run_dir>/volumes
    allowed_hosts: str = ""  # Host header names, comma-separated; empty: loopback names + host, at port


@dataclass
class GlobalManagerConfig:
    host: str = "127.0.0.1"
    port: int = 5000
    pub_host: str = "127.0.0.1"
    pub_port: int = 5557
    advertise_addr: str = "127.0.0.1"
    allowed_hosts: str = ""  # Host header names, comma-separated; empty: loopback + host + advertise_addr, at port
    docker_url: str = "unix:///var/run/docker.sock"
    # One /24 per live job network: 2,048 of them, more than the jobs a deployment can hold at once (a job
    # holds at least one core) on anything up to 2,048 cores; beyond that jobs wait for a subnet.
    network_pool: str = "10.200.0.0/13"
    network_prefix: int = 24
    sweep_seconds: float = 10.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 5100  # Prometheus /metrics; 0 disables it


@dataclass
class JobManagerConfig:
    host: str = "127.0.0.1"
    hint_port: int = 5555
    sweep_seconds: float = 5.0
    strategy: str = "first-fit"
    lease_seconds: float = 30.0
    redeploy_after_seconds: float = 10.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 5101  # Prometheus /metrics; 0 disables it


@dataclass
class DiscoveryConfig:
    host: str = "127.0.0.1"
    port: int = 5556
    heartbeat_timeout_seconds: float = 15.0
    sweep_seconds: float = 2.0
    max_requeues: int = 3
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 5102  # Prometheus /metrics; 0 disables it


@dataclass
class WorkerConfig:
    name: str = ""  # empty: this host's name
    docker_url: str = "unix:///var/run/docker.sock"
    cores: str = ""  # empty: every core the engine has; else a cpuset such as "0-3"
    memory: str = ""  # empty: the engine's memory; else "8g"
    heartbeat_seconds: float = 3.0
    sweep_seconds: float = 5.0
    stop_timeout_seconds: int = 5
    parallelism: int = 4  # container creates/starts/removals of one reconcile pass run this many at a time
    evm_poll_seconds: float = 0.5  # how often EPMs' EVM versions are polled (EVMs added/deleted, reports applied)
    evm_resync_seconds: float = 5.0  # how often the EPMs' overlay addresses (their VPC peers) are re-read
    evm_refresh_seconds: float = 60.0  # every EPM's desired-EVM file is re-read at least this often (safety net)
    evm_op_timeout_seconds: float = 20.0  # an agent's kernel call taking longer ends that agent (restarted)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 5103  # Prometheus /metrics; 0 disables it; set per Worker when several share a host
    pids_limit: int = 1024  # processes + threads per task container (its pids cgroup): a fork bomb stays inside


@dataclass
class ZmqConfig:
    max_frame_bytes: int = 65536  # ZMQ_MAXMSGSIZE on every socket: a peer sending more is disconnected
    replay_window_seconds: float = 30.0  # a frame whose ts is further than this from the receiver's clock is dropped


@dataclass
class StorageConfig:
    """Bounds on what the deployment keeps (docs/security.md, "Storage and retention")."""

    checkpoint_quota_bytes: int = 10 * 2**30  # all checkpoints together; a new one beyond it is refused 409
    job_retention_seconds: float = 7 * 86400.0  # finished jobs (and their records) are deleted this long after
    evm_retention_seconds: float = 86400.0  # deleted/failed EVM records are removed this long after their end
    sweep_seconds: float = 60.0  # how often the GlobalManager's retention sweep runs


@dataclass
class Config:
    run_dir: str = ""
    api_token: str = ""
    cluster_id: str = ""
    # Where the control plane listens and how remote Workers reach it (MongoDB, Discovery's PULL, the
    # GM's PUB) when Workers run on other hosts; empty: the inventory's manager_address (docs/cluster.md).
    control_address: str = ""
    mongo: MongoConfig = field(default_factory=MongoConfig)
    frontend: FrontEndConfig = field(default_factory=FrontEndConfig)
    globalmanager: GlobalManagerConfig = field(default_factory=GlobalManagerConfig)
    jobmanager: JobManagerConfig = field(default_factory=JobManagerConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    zmq: ZmqConfig = field(default_factory=ZmqConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)

    # ---- derived values -------------------------------------------------------------------
    @property
    def run_path(self) -> Path:
        return Path(self.run_dir)

    @property
    def token_file(self) -> Path:
        return self.run_path / "api_token"

    @property
    def cluster_file(self) -> Path:
        return self.run_path / "cluster_id"

    @property
    def mongo_uri(self) -> str:
        if self.mongo.uri:
            return self.mongo.uri
        return f"mongodb://{self.mongo.embedded_host}:{self.mongo.embedded_port}/"

    @property
    def frontend_url(self) -> str:
        return f"http://{self.frontend.host}:{self.frontend.port}"

    @property
    def globalmanager_url(self) -> str:
        return f"http://{self.globalmanager.host}:{self.globalmanager.port}"

    @property
    def jobmanager_hint_endpoint(self) -> str:
        return f"tcp://{self.jobmanager.host}:{self.jobmanager.hint_port}"

    @property
    def discovery_endpoint(self) -> str:
        return f"tcp://{self.discovery.host}:{self.discovery.port}"

    @property
    def globalmanager_pub_endpoint(self) -> str:
        return f"tcp://{self.globalmanager.pub_host}:{self.globalmanager.pub_port}"

    @property
    def worker_name(self) -> str:
        return self.worker.name or socket.gethostname()

    @property
    def volume_root(self) -> Path:
        return Path(self.frontend.volume_root or (self.run_path / "volumes"))

    def token(self) -> str:
        """The API token: the configured value, else the run directory's token file."""
        if self.api_token:
            return self.api_token
        try:
            return self.token_file.read_text().strip()
        except FileNotFoundError:
            return ""

    def cluster(self) -> str:
        """This deployment's id, which labels every container and network it creates."""
        if self.cluster_id:
            return self.cluster_id
        try:
            return self.cluster_file.read_text().strip()
        except FileNotFoundError:
            return "default"

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces this config in a child process."""
        env = {"RSWARM_RUN_DIR": self.run_dir}
        if self.mongo.uri:
            env["MONGO_URI"] = self.mongo.uri
        for section in _SECTIONS:
            sub = getattr(self, section)
            for f in fields(sub):
                env[f"RSWARM_{section.upper()}_{f.name.upper()}"] = str(getattr(sub, f.name))
        return env


_SECTIONS = ("mongo", "frontend", "globalmanager", "jobmanager", "discovery", "worker", "zmq", "storage")
_PORT_KEYS = {"port", "pub_port", "hint_port", "embedded_port"}


def _coerce(where: str, current: Any, raw: Any) -> Any:
    kind = type(current)
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(raw, bool):
                raise ValueError
            return int(raw)
        if kind is float:
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if not isinstance(raw, str | int | float) or isinstance(raw, bool):
            raise ValueError
        return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {kind.__name__}, got {raw!r}") from None


def _check(cfg: Config) -> None:
    for section in _SECTIONS:
        sub = getattr(cfg, section)
        for f in fields(sub):
            value = getattr(sub, f.name)
            where = f"{section}.{f.name}"
            if f.name in _PORT_KEYS and not 1 <= value <= 65535:
                raise ConfigError(f"{where}: port must be 1..65535, got {value}")
            if f.name == "metrics_port" and not 0 <= value <= 65535:
                raise ConfigError(f"{where}: port must be 0 (disabled) or 1..65535, got {value}")
            if f.name.endswith("seconds") and value <= 0:
                raise ConfigError(f"{where}: must be > 0, got {value}")
    if cfg.control_address:
        try:
            ipaddress.ip_address(cfg.control_address)
        except ValueError:
            raise ConfigError(f"control_address: not an IP address: {cfg.control_address!r}") from None
    if not 8 <= cfg.globalmanager.network_prefix <= 29:
        raise ConfigError("globalmanager.network_prefix: must be 8..29")
    if not 4096 <= cfg.zmq.max_frame_bytes <= 16 * 1024 * 1024:
        raise ConfigError(f"zmq.max_frame_bytes: must be 4096..16777216, got {cfg.zmq.max_frame_bytes}")
    if not 16 <= cfg.worker.pids_limit <= 4_194_304:
        raise ConfigError(f"worker.pids_limit: must be 16..4194304, got {cfg.worker.pids_limit}")
    try:
        pool = ipaddress.IPv4Network(cfg.globalmanager.network_pool)
    except ValueError as exc:
        raise ConfigError(f"globalmanager.network_pool: {exc}") from None
    if pool.prefixlen > cfg.globalmanager.network_prefix:
        raise ConfigError(f"globalmanager.network_pool: /{pool.prefixlen} is smaller than one job network "
                          f"(globalmanager.network_prefix /{cfg.globalmanager.network_prefix})")
    if cfg.storage.checkpoint_quota_bytes < 0:
        raise ConfigError("storage.checkpoint_quota_bytes: must be >= 0 (0: no checkpoint may be stored)")
    if bool(cfg.mongo.tls_cert_file) != bool(cfg.mongo.tls_key_file):
        raise ConfigError("mongo.tls_cert_file and mongo.tls_key_file: set both or neither")
    if not 1 <= cfg.worker.parallelism <= 64:
        raise ConfigError(f"worker.parallelism: must be 1..64, got {cfg.worker.parallelism}")
    for key in ("workers", "threads", "max_body_bytes", "max_tasks_per_job"):
        if getattr(cfg.frontend, key) < 1:
            raise ConfigError(f"frontend.{key}: must be >= 1")


def load(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> Config:
    """Load the config; raise ConfigError naming the key on any invalid value."""
    env = dict(os.environ if env is None else env)
    cfg = Config()
    file = Path(path or env.get("RSWARM_CONFIG") or REPO_ROOT / "rswarm.toml")
    if file.exists():
        try:
            data = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from None
        for key, value in data.items():
            if key in _SECTIONS:
                if not isinstance(value, dict):
                    raise ConfigError(f"{file}: [{key}] must be a table")
                sub = getattr(cfg, key)
                names = {f.name for f in fields(sub)}
                for k, v in value.items():
                    if k not in names:
                        raise ConfigError(f"{file}: unknown key {key}.{k}")
                    setattr(sub, k, _coerce(f"{key}.{k}", getattr(sub, k), v))
            elif key in ("run_dir", "cluster_id", "control_address"):
                setattr(cfg, key, _coerce(key, "", value))
            elif key == "api_token":
                raise ConfigError(f"{file}: api_token does not belong in a file; use RSWARM_API_TOKEN")
            else:
                raise ConfigError(f"{file}: unknown key {key}")
    for section in _SECTIONS:
        sub = getattr(cfg, section)
        for f in fields(sub):
            name = f"RSWARM_{section.upper()}_{f.name.upper()}"
            if name in env:
                setattr(sub, f.name, _coerce(name, getattr(sub, f.name), env[name]))
    if env.get("MONGO_URI"):
        cfg.mongo.uri = env["MONGO_URI"]
    cfg.api_token = env.get("RSWARM_API_TOKEN", cfg.api_token)
    cfg.cluster_id = env.get("RSWARM_CLUSTER_ID", cfg.cluster_id)
    cfg.control_address = env.get("RSWARM_CONTROL_ADDRESS", cfg.control_address)
    cfg.run_dir = str(Path(env.get("RSWARM_RUN_DIR") or cfg.run_dir or REPO_ROOT / "run").resolve())
    _check(cfg)
    return cfg
