"""``DIR/.meshfed/state.json``: what ``fedctl up`` runs, for ``status``, ``down``, ``curl`` and ``scale``.

The supervisor is the only writer; it rewrites the whole file atomically (a temporary
file beside it, fsync, ``os.replace``) whenever something changes, so a reader never
sees half a document. Every process is recorded with its PID *and* the kernel's start
time of that PID (``/proc/PID/stat`` field 22): a PID the kernel has since handed to
an unrelated process does not match, so ``down`` never signals a stranger.

A state file whose supervisor is gone is stale (the machine rebooted, the supervisor
was killed): ``clean_stale`` stops whatever it recorded that still runs and removes it.

Commands run without DIR find the mesh of the last ``fedctl up`` through a pointer file:
``$XDG_STATE_HOME/meshfed/last-up`` (``~/.local/state/meshfed/last-up`` when unset),
holding the absolute path of DIR.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from ._errors import FederationError

STATE_DIR = ".meshfed"
STATE_FILE = "state.json"
FORMAT = 1


class StateError(FederationError):
    """No usable state: no mesh was started from here, or the file is damaged."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


def state_dir(mesh_dir: str | os.PathLike[str]) -> Path:
    return Path(mesh_dir).resolve() / STATE_DIR


def state_path(mesh_dir: str | os.PathLike[str]) -> Path:
    return state_dir(mesh_dir) / STATE_FILE


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# -- records ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    """One supervised process. ``pid`` is None while it waits to be (re)started."""

    name: str
    pid: int | None = None
    start_time: int | None = None
    """Kernel start time of ``pid`` in clock ticks since boot; None where /proc is missing."""
    state: str = "starting"
    """starting, running, backoff (waiting to restart), failed (gave up) or stopped."""
    restarts: int = 0
    exit_code: int | None = None
    log: str = ""


@dataclass(frozen=True, slots=True)
class ClusterRecord:
    name: str
    trust_domain: str
    address_block: str
    address: str
    """The control plane's address: discovery :15012, metrics :15014, DNS :15053."""
    discovery: str
    metrics: str
    dns: str
    control_plane: ProcessRecord
    ready: bool = False
    """The control plane answers (discovery port accepts, first config accepted)."""
    gateway: ProcessRecord | None = None
    """The cluster's east-west gateway process; None when the cluster runs none."""
    gateway_address: str = ""
    """Its passthrough listener, ``host:15443``."""
    gateway_ready: bool = False


@dataclass(frozen=True, slots=True)
class WorkloadRecord:
    """A workload of a cluster and how many instances it should have (after ``fedctl scale``)."""

    cluster: str
    namespace: str
    name: str
    replicas: int


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    cluster: str
    namespace: str
    workload: str
    instance: str
    address: str
    app: ProcessRecord
    sidecar: ProcessRecord
    ports: tuple[int, ...] = ()
    """Ports the app listens on at ``address``."""
    app_ready: bool = False
    sidecar_ready: bool = False
    spiffe_id: str = ""
    config_version: str | None = None
    """Version of the config the sidecar applied (its ``/config_dump``)."""
    cert_not_after: str | None = None

    @property
    def ready(self) -> bool:
        return self.app_ready and self.sidecar_ready

    @property
    def outbound(self) -> str:
        """The sidecar's outbound listener: the app's ``HTTP_PROXY``."""
        return f"{self.address}:15001"

    @property
    def admin(self) -> str:
        return f"{self.address}:15000"


@dataclass(frozen=True, slots=True)
class MeshState:
    dir: str
    supervisor: ProcessRecord
    phase: str = "starting"
    """starting, running, stopping, stopped or failed."""
    error: str | None = None
    wiring: str = "files"
    """How sidecars get config and certificates: ``files`` or ``discovery``."""
    clusters: tuple[ClusterRecord, ...] = ()
    workloads: tuple[WorkloadRecord, ...] = ()
    instances: tuple[InstanceRecord, ...] = ()
    updated_at: str = field(default_factory=_now)

    def processes(self) -> list[ProcessRecord]:
        """Every process recorded, control planes last (the order ``down`` stops them)."""
        out = [i.app for i in self.instances] + [i.sidecar for i in self.instances]
        out += [c.gateway for c in self.clusters if c.gateway is not None]
        return out + [c.control_plane for c in self.clusters]

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes() if p.pid is not None]

    def cluster(self, name: str) -> ClusterRecord | None:
        return next((c for c in self.clusters if c.name == name), None)

    def instances_of(self, cluster: str, workload: str) -> list[InstanceRecord]:
        return [i for i in self.instances if i.cluster == cluster and i.workload == workload]

    @property
    def ready(self) -> bool:
        return (bool(self.clusters) and all(c.ready and (c.gateway is None or c.gateway_ready) for c in self.clusters)
                and all(i.ready for i in self.instances))

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **_encode(self)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "MeshState":
        if doc.get("format") != FORMAT:
            raise ValueError(f"state format {doc.get('format')!r}; expected {FORMAT}")
        return _decode(cls, doc)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def _encode(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return {_camel(f.name): _encode(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple):
        return [_encode(v) for v in obj]
    return obj


_NESTED: dict[str, Any] = {}


def _decode(cls: Any, doc: Mapping[str, Any]) -> Any:
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        key = _camel(f.name)
        if key not in doc:
            continue
        value = doc[key]
        kind = _NESTED.get(f"{cls.__name__}.{f.name}")
        if kind is not None and value is not None:
            value = tuple(_decode(kind, v) for v in value) if f.type.startswith("tuple") else _decode(kind, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


_NESTED.update({
    "MeshState.supervisor": ProcessRecord, "MeshState.clusters": ClusterRecord,
    "MeshState.workloads": WorkloadRecord, "MeshState.instances": InstanceRecord,
    "ClusterRecord.control_plane": ProcessRecord, "ClusterRecord.gateway": ProcessRecord,
    "InstanceRecord.app": ProcessRecord,
    "InstanceRecord.sidecar": ProcessRecord,
})


# -- files -----------------------------------------------------------------------------------


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new bytes, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_state(mesh_dir: str | os.PathLike[str], state: MeshState) -> None:
    state = replace(state, updated_at=_now())
    write_atomic(state_path(mesh_dir), json.dumps(state.to_json(), indent=1).encode() + b"\n")


def read_state(mesh_dir: str | os.PathLike[str]) -> MeshState:
    path = state_path(mesh_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise StateError(f"{path}: no mesh runs from {Path(mesh_dir)} (start one with 'fedctl up DIR')",
                         str(path)) from None
    except OSError as exc:
        raise StateError(f"{path}: cannot read: {exc.strerror}", str(path)) from None
    try:
        return MeshState.from_json(json.loads(text))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise StateError(f"{path}: damaged state file ({exc}); remove it after stopping the processes "
                         "it names", str(path)) from None


def remove_state(mesh_dir: str | os.PathLike[str]) -> None:
    try:
        state_path(mesh_dir).unlink()
    except FileNotFoundError:
        pass


# -- processes -------------------------------------------------------------------------------


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None (no such process, no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:  # the command name may hold spaces and parentheses: split after the last ')'
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].startswith("Z")


def alive(pid: int | None, start_time: int | None = None) -> bool:
    """Whether ``pid`` runs and is the process that was recorded (same start time); exited
    processes not yet reaped by their parent (zombies) do not count."""
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    if is_zombie(pid):
        return False
    return start_time is None or process_start_time(pid) in (None, start_time)


def signal_process(record: ProcessRecord, signum: int) -> bool:
    """Send ``signum`` to the process group the record leads (each child leads its own),
    if the recorded process still runs. True when a signal was sent."""
    if not alive(record.pid, record.start_time):
        return False
    assert record.pid is not None
    try:
        os.killpg(record.pid, signum)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(record.pid, signum)
        except (ProcessLookupError, PermissionError):
            return False
    return True


def clean_stale(mesh_dir: str | os.PathLike[str]) -> list[int]:
    """If the state's supervisor is gone, kill what it recorded that still runs and remove the
    file; the PIDs killed. A live supervisor's state is left alone (``[]``)."""
    try:
        state = read_state(mesh_dir)
    except StateError:
        return []
    if alive(state.supervisor.pid, state.supervisor.start_time):
        return []
    killed = [p.pid for p in state.processes() if p.pid is not None and signal_process(p, signal.SIGKILL)]
    remove_state(mesh_dir)
    return killed


# -- the pointer to the last `fedctl up` -----------------------------------------------------


def pointer_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".local", "state")
    return Path(base) / "meshfed" / "last-up"


def remember(mesh_dir: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> None:
    write_atomic(pointer_path(environ), str(Path(mesh_dir).resolve()).encode() + b"\n")


def remembered(environ: Mapping[str, str] | None = None) -> Path | None:
    try:
        text = pointer_path(environ).read_text().strip()
    except OSError:
        return None
    return Path(text) if text else None


def resolve_dir(mesh_dir: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """DIR as given, else the DIR of the last ``fedctl up``."""
    if mesh_dir:
        return Path(mesh_dir).resolve()
    found = remembered(environ)
    if found is None:
        raise StateError(f"no mesh to act on: give DIR, or run 'fedctl up DIR' first (the last one is "
                         f"remembered in {pointer_path(environ)})", str(pointer_path(environ)))
    return found
