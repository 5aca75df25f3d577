"""The Docker provider: sandboxes as hardened containers, through the Docker SDK for Python.

Containers share the host's kernel, so every container is made with: no network (``none``), all
capabilities dropped but ``KEPT_CAPABILITIES``, ``no-new-privileges``, Docker's default seccomp
profile, a pids limit, memory (no swap) and CPU limits, and nothing mounted from the host
(docs/security.md compares this with a VM, point by point).

Layers are image tags in one repository per state directory (``<prefix>layers-<hash>``; a
reference is ``docker:<repository>:<tag>``): a new layer is a tag of its parent's image, a
snapshot is ``docker commit`` of the container re-pointing the frozen layer's tag, and the
container goes on writing its own read-write layer (the new active one: a tag of the same
commit). Snapshots are disk-only: CRIU does not work on these kernels (DESIGN.md), so the
provider does not declare memory snapshots and the core refuses ``memory=True`` for it.
Containers carry the labels ``vmsandbox.owner`` (the state directory), ``vmsandbox.sandbox`` and
``vmsandbox.layer``; list_machines and stray_artifacts go by those labels and that repository.

Commands run through the Docker exec API (no SSH): ``DockerSession`` reuses ``SSHSession``'s
command semantics (its own process group, killed whole at the timeout; stdin; env; working
directory; output caps; streaming) over an exec's multiplexed stream.

The daemon: ``$DOCKER_HOST`` when set (an operator's own daemon, used as it is), else the private
daemon ``scripts/setup.sh`` starts (``PRIVATE_SOCKET``), else Docker's default socket.
Images: ``vmsandbox box build tiny`` imports the box's root tree as ``vmsandbox/tiny``
(``import_box``); nothing is ever pulled (no registry is reachable from these machines).
"""
from __future__ import annotations

import hashlib
import logging
import os
import select
import shlex
import socket
import struct
import subprocess
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import docker
import docker.errors

from ..exceptions import (ConfigError, GuestUnreachableError, NotFoundError, ProviderError,
                          ProviderUnavailableError, StateCorruptionError)
from ..ssh import _FORK_WRAPPER, _PGID_GRACE, _PgidLine, SSHSession
from .base import Capability, DomainStats, MachineSpec, Provider, ProviderCheck, SnapshotPlan

log = logging.getLogger("vmsandbox.docker")

PRIVATE_SOCKET = "/run/vmsandbox-docker.sock"        # the daemon scripts/setup.sh starts
DEFAULT_IMAGE = "vmsandbox/tiny"
#: what a container keeps of root's capabilities: file ownership and permissions, signals to its
#: own processes, switching users, binding low ports. Gone among others: NET_RAW (raw sockets),
#: MKNOD, SYS_CHROOT, AUDIT_WRITE, SETFCAP, and every capability Docker never grants (SYS_ADMIN...).
KEPT_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "NET_BIND_SERVICE")
PIDS_LIMIT = 256                                     # processes per container: a fork bomb stops here
_CPU_PERIOD = 100_000
# PID 1 of a sandbox: a shell that idles, reaps orphaned processes (``wait`` collects any child)
# and ends on SIGTERM. Not Docker's --init: that bind-mounts a host binary into the container.
_IDLE = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done"]
_STATES = {"created": "shutoff", "running": "running", "paused": "paused", "restarting": "running",
           "removing": "shutoff", "exited": "shutoff", "dead": "crashed"}


def docker_host() -> str:
    """Where the daemon is: $DOCKER_HOST, else the private daemon's socket if it exists, else Docker's default."""
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    if os.path.exists(PRIVATE_SOCKET):
        return f"unix://{PRIVATE_SOCKET}"
    return "unix:///var/run/docker.sock"


def connect(base_url: Optional[str] = None, timeout: float = 60) -> "docker.DockerClient":
    """A client for the daemon at ``base_url`` (default ``docker_host()``); ProviderUnavailableError if it does not answer."""
    url = base_url or docker_host()
    try:
        client = docker.DockerClient(base_url=url, timeout=timeout, version="auto")
        client.ping()
        return client
    except docker.errors.DockerException as exc:
        raise ProviderUnavailableError(
            f"no Docker daemon answers at {url} ({exc}); run `bash scripts/setup.sh` (it starts a private "
            f"dockerd) or set DOCKER_HOST to your daemon") from exc


def _map(exc: Exception, doing: str) -> Exception:
    if isinstance(exc, docker.errors.NotFound):
        return NotFoundError(f"{doing}: {exc.explanation or exc}")
    if isinstance(exc, docker.errors.APIError):
        return ProviderError(f"{doing}: {exc.explanation or exc}")
    return ProviderUnavailableError(f"{doing}: the Docker daemon does not answer ({exc})")


@dataclass(frozen=True)
class DockerEndpoint:
    """Where commands reach a container: the daemon and the container's name."""
    base_url: str
    container: str


class DockerProvider(Provider):
    name = "docker"
    ref_scheme = True
    capabilities = frozenset({Capability.DISK_SNAPSHOTS, Capability.CLONES, Capability.PAUSE,
                              Capability.CPU_QUOTA, Capability.METRICS, Capability.STOP_START})

    def __init__(self, config: Any, layout: Any) -> None:
        super().__init__(config, layout)
        self.base_url = docker_host()
        self.prefix = config.sandbox.domain_prefix
        self.owner = str(layout.state_dir)
        self.repo = f"{self.prefix}layers-{hashlib.sha256(self.owner.encode()).hexdigest()[:12]}"
        self._client: Optional[docker.DockerClient] = None
        self._lock = threading.Lock()
        self._boxes: dict[str, Any] = {}           # image sources seen (an image is looked up once)

    # -- plumbing ------------------------------------------------------------------------
    @property
    def client(self) -> "docker.DockerClient":
        with self._lock:
            if self._client is None:
                self._client = connect(self.base_url)
            return self._client

    @property
    def api(self) -> "docker.APIClient":
        return self.client.api

    def _own(self, name: str) -> None:
        if not name.startswith(self.prefix):
            raise ProviderError(f"refusing to touch container {name!r}: it lacks the prefix {self.prefix!r}")

    def _container(self, name: str) -> Any:
        self._own(name)
        try:
            return self.client.containers.get(name)
        except docker.errors.DockerException as exc:
            raise _map(exc, f"looking up container {name}") from exc

    def _tag(self, ref: str) -> str:
        """``docker:<repo>:<tag>`` -> ``<repo>:<tag>`` (only this state directory's repository)."""
        body = ref[len("docker:"):] if ref.startswith("docker:") else ""
        if not body.startswith(f"{self.repo}:"):
            raise ProviderError(f"{ref!r} is not a layer of this state directory's Docker repository {self.repo}")
        return body

    def _new_ref(self) -> str:
        return f"docker:{self.repo}:{self.layout.new_layer_id().lower()}"

    def _image_id(self, name: str, doing: str) -> str:
        try:
            return self.api.inspect_image(name)["Id"]
        except docker.errors.DockerException as exc:
            raise _map(exc, doing) from exc

    # -- images (box sources) ------------------------------------------------------------
    def box(self, source: str) -> Any:
        """A container image as a ``Box`` (``source`` = ``docker:IMAGE``); NotFoundError naming
        the build command when the daemon does not have it (nothing is pulled)."""
        from ..boxes import Box
        if source in self._boxes:
            return self._boxes[source]
        image = source.split(":", 1)[1]
        try:
            attrs = self.api.inspect_image(image)
        except docker.errors.NotFound:
            hint = ("build it with `vmsandbox box build tiny` (it also makes the container image vmsandbox/tiny)"
                    if image.split(":")[0] == DEFAULT_IMAGE else
                    f"load it into the daemon at {self.base_url} (`docker import`/`docker load`; nothing is pulled)")
            raise NotFoundError(f"container image {image!r} is not in the Docker daemon at {self.base_url}; {hint}") from None
        except docker.errors.DockerException as exc:
            raise _map(exc, f"looking up image {image}") from exc
        box = self._boxes[source] = Box(
            name=source, path=Path("/"), image=Path(image), virtual_size=0, format="docker-image", kernel=None,
            initrd=None, cmdline=None, ssh_user="root", ssh_key=Path(os.devnull), host_key=None, created_at=0.0,
            source=attrs["Id"])
        return box

    # -- layers: tags in this state directory's repository -------------------------------
    def new_root_layer(self, box: Any, size_bytes: int) -> str:
        return self._tag_as_new(str(box.image), f"making a layer on image {box.image}")

    def new_layer(self, parent_ref: str, size_bytes: Optional[int] = None) -> str:
        try:
            self.api.inspect_image(self._tag(parent_ref))
        except docker.errors.NotFound:
            raise StateCorruptionError(f"layer image {parent_ref} is missing; run `vmsandbox doctor`") from None
        except docker.errors.DockerException as exc:
            raise _map(exc, f"reading layer {parent_ref}") from exc
        return self._tag_as_new(self._tag(parent_ref), f"making a layer on {parent_ref}")

    def _tag_as_new(self, image: str, doing: str) -> str:
        ref = self._new_ref()
        repo, tag = self._tag(ref).rsplit(":", 1)
        try:
            self.api.tag(image, repo, tag)
        except docker.errors.DockerException as exc:
            raise _map(exc, doing) from exc
        return ref

    def delete_layer(self, ref: str) -> None:
        self._untag(self._tag(ref))

    def _untag(self, name: str) -> None:
        try:
            self.api.remove_image(name, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.DockerException as exc:
            raise _map(exc, f"removing layer {name}") from exc

    def check_layer(self, ref: str, parent_ref: Optional[str]) -> list[str]:
        try:
            self.api.inspect_image(self._tag(ref))
        except docker.errors.NotFound:
            return [f"its image {ref} is missing"]
        except (docker.errors.DockerException, ProviderError) as exc:
            return [f"cannot be read: {exc}"]
        return []

    def stray_artifacts(self, known: set[str]) -> list[str]:
        try:
            images = self.api.images(name=self.repo)
        except docker.errors.DockerException as exc:
            raise _map(exc, "listing layer images") from exc
        refs = {f"docker:{t}" for i in images for t in (i.get("RepoTags") or []) if t.startswith(f"{self.repo}:")}
        return sorted(refs - known)

    def remove_artifact(self, ref: str) -> None:
        self.delete_layer(ref)

    # -- machines ------------------------------------------------------------------------
    def start_machine(self, spec: MachineSpec) -> None:
        """Start the existing container of ``spec.name`` (a stopped sandbox), or make one on the
        image of ``spec.layer`` with the hardening of the module docstring."""
        self._own(spec.name)
        try:
            existing = self.client.containers.get(spec.name)
        except docker.errors.NotFound:
            existing = None
        except docker.errors.DockerException as exc:
            raise _map(exc, f"looking up container {spec.name}") from exc
        if existing is not None:
            try:
                if existing.status == "paused":
                    existing.unpause()
                elif existing.status != "running":
                    existing.start()
            except docker.errors.DockerException as exc:
                raise _map(exc, f"starting container {spec.name}") from exc
            return
        network = self._network(spec.network_mode)
        cpus = spec.cpu_quota if spec.cpu_quota is not None else spec.vcpus
        try:
            container = self.client.containers.create(
                self._tag(spec.layer), _IDLE, name=spec.name, hostname=spec.hostname,
                network_mode=network, cap_drop=["ALL"], cap_add=list(KEPT_CAPABILITIES),
                security_opt=["no-new-privileges:true"], pids_limit=PIDS_LIMIT,
                mem_limit=spec.memory_bytes, memswap_limit=spec.memory_bytes,
                cpu_period=_CPU_PERIOD, cpu_quota=max(1000, int(_CPU_PERIOD * cpus)),
                ipc_mode="private", labels=self._labels(spec), detach=True)
        except docker.errors.DockerException as exc:
            raise _map(exc, f"creating container {spec.name}") from exc
        try:
            container.start()
        except docker.errors.DockerException as exc:
            self.destroy_machine(spec.name)
            raise _map(exc, f"starting container {spec.name}") from exc

    def _labels(self, spec: MachineSpec) -> dict:
        return {"vmsandbox.owner": spec.owner or self.owner, "vmsandbox.sandbox": spec.sandbox_id,
                "vmsandbox.layer": spec.layer, "vmsandbox.vcpus": str(spec.vcpus)}

    def _network(self, mode: str) -> str:
        if mode == "none":
            return "none"
        try:
            bridges = [n.name for n in self.client.networks.list(names=["bridge"])]
        except docker.errors.DockerException as exc:
            raise _map(exc, "listing Docker networks") from exc
        if "bridge" not in bridges:
            raise ConfigError(f"'nat' needs a Docker bridge network and the daemon at {self.base_url} has none "
                              "(it runs with --bridge=none); use network_mode 'none', or a VM", "sandbox config.network_mode")
        return "bridge"

    def destroy_machine(self, name: str) -> None:
        self._own(name)
        try:
            self.api.remove_container(name, force=True, v=True)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if exc.status_code == 409 and "already in progress" in str(exc.explanation):
                self._wait_gone(name)
                return
            raise _map(exc, f"removing container {name}") from exc
        except docker.errors.DockerException as exc:
            raise _map(exc, f"removing container {name}") from exc

    def _wait_gone(self, name: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.machine_state(name) is not None:
            time.sleep(0.1)

    def shutdown_machine(self, name: str, timeout: float) -> None:
        c = self._container(name)
        try:
            if c.status == "paused":
                c.unpause()
            c.stop(timeout=max(1, int(timeout)))
        except docker.errors.DockerException as exc:
            raise _map(exc, f"stopping container {name}") from exc

    def kill_machine(self, name: str) -> None:
        c = self._container(name)
        try:
            if c.status in ("running", "paused", "restarting"):
                c.kill()
        except docker.errors.APIError as exc:
            if exc.status_code != 409:              # not running (any more)
                raise _map(exc, f"killing container {name}") from exc

    def pause_machine(self, name: str) -> None:
        try:
            self._container(name).pause()
        except docker.errors.DockerException as exc:
            raise _map(exc, f"pausing container {name}") from exc

    def resume_machine(self, name: str) -> None:
        try:
            self._container(name).unpause()
        except docker.errors.DockerException as exc:
            raise _map(exc, f"resuming container {name}") from exc

    def set_cpu_quota(self, name: str, fraction: Optional[float]) -> None:
        """``fraction`` of one CPU per vCPU (as for VMs); None: back to the sandbox's CPU count."""
        c = self._container(name)
        vcpus = int(c.labels.get("vmsandbox.vcpus", "1"))
        quota = max(1000, int(_CPU_PERIOD * vcpus * (1.0 if fraction is None else fraction)))
        try:
            c.update(cpu_period=_CPU_PERIOD, cpu_quota=quota)
        except docker.errors.DockerException as exc:
            raise _map(exc, f"setting the CPU quota of {name}") from exc

    def machine_state(self, name: str) -> Optional[str]:
        self._own(name)
        try:
            status = self.api.inspect_container(name)["State"]["Status"]
        except docker.errors.NotFound:
            return None
        except docker.errors.DockerException as exc:
            raise _map(exc, f"reading the state of {name}") from exc
        return _STATES.get(status, "unknown")

    def list_machines(self, prefix: str, owner: Optional[str] = None) -> list[str]:
        filters: dict = {"label": [f"vmsandbox.owner={owner}"] if owner is not None else ["vmsandbox.owner"]}
        try:
            found = self.api.containers(all=True, filters=filters)
        except docker.errors.DockerException as exc:
            raise _map(exc, "listing containers") from exc
        names = {n.lstrip("/") for c in found for n in c.get("Names") or []}
        return sorted(n for n in names if n.startswith(prefix))

    def machine_stats(self, name: str) -> DomainStats:
        """One-shot ``docker stats``: CPU time, memory (without the page cache), pids."""
        self._own(name)
        try:
            attrs = self.api.inspect_container(name)
            raw = self.api.stats(name, stream=False, one_shot=True) if attrs["State"]["Running"] else {}
        except docker.errors.DockerException as exc:
            raise _map(exc, f"sampling {name}") from exc
        state = _STATES.get(attrs["State"]["Status"], "unknown")
        mem = raw.get("memory_stats") or {}
        usage = mem.get("usage")
        cache = (mem.get("stats") or {}).get("inactive_file", (mem.get("stats") or {}).get("cache", 0))
        return DomainStats(
            state=state, cpu_time_ns=((raw.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage", 0),
            vcpus=int(attrs["Config"]["Labels"].get("vmsandbox.vcpus", "1")),
            memory_total=attrs["HostConfig"].get("Memory") or mem.get("limit"),
            memory_used=None if usage is None else max(0, usage - cache),
            extra={"pids": (raw.get("pids_stats") or {}).get("current"), "pids_limit": attrs["HostConfig"].get("PidsLimit")})

    def checks(self) -> list[ProviderCheck]:
        try:
            info = self.client.info()
        except ProviderError as exc:
            return [ProviderCheck("docker daemon", False, str(exc),
                                  "bash scripts/setup.sh (starts a private dockerd), or set DOCKER_HOST")]
        out = [ProviderCheck("docker daemon", True, f"reachable at {self.base_url} (Docker {info.get('ServerVersion')}, "
                                                    f"{info.get('Driver')}, cgroup v{info.get('CgroupVersion', '?')})")]
        seccomp = any("seccomp" in s for s in info.get("SecurityOptions") or [])
        out.append(ProviderCheck("docker seccomp", seccomp, "default seccomp profile available" if seccomp
                                 else "the daemon has no seccomp support: containers are less confined",
                                 "" if seccomp else "use a Docker built with seccomp"))
        try:
            self.api.inspect_image(DEFAULT_IMAGE)
            out.append(ProviderCheck("container image", True, f"{DEFAULT_IMAGE} present"))
        except docker.errors.DockerException:
            out.append(ProviderCheck("container image", False, f"{DEFAULT_IMAGE} is not in the daemon",
                                     "vmsandbox box build tiny --force"))
        return out

    # -- snapshots: docker commit ---------------------------------------------------------
    def plan_snapshot(self, active_ref: str, memory: bool) -> SnapshotPlan:
        if memory:
            raise ProviderError("containers have disk-only snapshots: CRIU checkpoints do not work on this kernel")
        return SnapshotPlan(frozen_ref=active_ref, active_ref=self._new_ref(), memory_ref=None)

    def snapshot_machine(self, name: str, plan: SnapshotPlan) -> None:
        """Commit the container's file system as the frozen layer (its tag now names the commit)
        and tag the same image as the new active layer; the container keeps running."""
        c = self._container(name)
        repo, frozen = self._tag(plan.frozen_ref).rsplit(":", 1)
        try:
            image = c.commit(repository=repo, tag=frozen, pause=c.status == "running",
                             conf={"Labels": {**c.labels, "vmsandbox.machine": name}})
            self.api.tag(image.id, *self._tag(plan.active_ref).rsplit(":", 1))
        except docker.errors.DockerException as exc:
            self.discard_snapshot(plan)
            raise _map(exc, f"committing {name}") from exc

    def snapshot_stopped(self, plan: SnapshotPlan) -> None:
        """A stopped container is committed like a running one: found by the layer it was made
        on, or by the machine a committed layer came from."""
        name = self._machine_of(plan.frozen_ref)
        if name is None:
            raise ProviderError(f"no container writes layer {plan.frozen_ref}: start the sandbox first")
        self.snapshot_machine(name, plan)

    def _machine_of(self, ref: str) -> Optional[str]:
        try:
            found = self.api.containers(all=True, filters={"label": [f"vmsandbox.owner={self.owner}",
                                                                      f"vmsandbox.layer={ref}"]})
            if found:
                return found[0]["Names"][0].lstrip("/")
            labels = self.api.inspect_image(self._tag(ref))["Config"].get("Labels") or {}
        except docker.errors.NotFound:
            return None
        except docker.errors.DockerException as exc:
            raise _map(exc, f"finding the container of {ref}") from exc
        return labels.get("vmsandbox.machine")

    def snapshot_completed(self, name: Optional[str], plan: SnapshotPlan) -> tuple[bool, Optional[str]]:
        """Switched when the new active layer's tag exists (it is made last)."""
        try:
            self.api.inspect_image(self._tag(plan.active_ref))
            return True, None
        except docker.errors.NotFound:
            return False, None
        except docker.errors.DockerException as exc:
            raise _map(exc, "reading a snapshot's layer") from exc

    def discard_snapshot(self, plan: SnapshotPlan) -> None:
        self._untag(self._tag(plan.active_ref))      # never the frozen ref: it is the sandbox's layer

    # -- commands --------------------------------------------------------------------------
    def endpoint(self, info: Any, box: Any) -> Any:
        return DockerEndpoint(self.base_url, info.domain)

    def open_session(self, endpoint: Any, on_new_host_key: Any = None) -> "DockerSession":
        self._own(endpoint.container)
        return DockerSession(self.client, endpoint.container)

    def accelerator(self) -> tuple[str, str]:
        return ("container", "shares the host kernel")

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


class DockerSession(SSHSession):
    """Commands in a container through the Docker exec API, with ``SSHSession``'s semantics:
    ``execute``, ``put`` and ``get`` are inherited and run on ``_run`` below (an exec instead of an
    SSH channel): the script runs in its own session that first reports its process-group id, and a
    timeout kills that whole group with a second exec."""

    def __init__(self, client: "docker.DockerClient", container: str) -> None:      # noqa: super() loads SSH keys
        self.client = client
        self.api = client.api
        self.container = container
        self.connect_timeout = 10.0
        self._wrapper = _FORK_WRAPPER
        self._lock = threading.Lock()
        self._transport = None

    @property
    def _where(self) -> str:
        return f"container {self.container}"

    def use_exec_mode(self, mode: str | None, on_exec_mode: Callable[[str], None] | None = None) -> None:
        """Containers always start commands with the fork wrapper: nothing to remember."""

    def wait_ready(self, timeout: float, console_log: Path | None = None,
                   progress: Callable[[float], None] | None = None) -> float:
        """Wait until a command runs in the container; GuestUnreachableError when it does not."""
        started = time.monotonic()
        last: Exception | None = None
        while True:
            if progress is not None:
                progress(time.monotonic() - started)
            try:
                if self._run("true", None, lambda _c: None, lambda _c: None, 10) == 0:
                    return time.monotonic() - started
            except ProviderError as exc:
                last = exc
            if time.monotonic() - started > timeout:
                raise GuestUnreachableError(f"{self._where} did not run a command within {timeout:.0f} s"
                                            + (f" (last error: {last})" if last else ""))
            time.sleep(0.1)

    def is_alive(self) -> bool:
        try:
            return self.api.inspect_container(self.container)["State"]["Running"]
        except docker.errors.DockerException:
            return False

    def close(self) -> None:
        pass                                     # the client belongs to the provider

    def _run(self, script: str, stdin_chunks: Iterable[bytes] | None, on_stdout: Callable[[bytes], None],
             on_stderr: Callable[[bytes], None], timeout: float | None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        command = ["/bin/sh", "-c", self._wrapper.format(script=shlex.quote(script))]
        try:
            exec_id = self.api.exec_create(self.container, command, stdin=True, stdout=True, stderr=True)["Id"]
            raw = self.api.exec_start(exec_id, socket=True)
        except docker.errors.DockerException as exc:
            raise _map(exc, f"running a command in {self._where}") from exc
        sock: socket.socket = getattr(raw, "_sock", raw)
        pgid = _PgidLine(on_stdout)
        frames = _Frames({1: pgid.feed, 2: on_stderr})
        feeder = _SocketFeeder(sock, stdin_chunks)
        finished = False
        try:
            while True:
                now = time.monotonic()
                if deadline is not None and now >= deadline and (pgid.value is not None or now >= deadline + _PGID_GRACE):
                    pgid.flush()
                    self._kill_group_exec(pgid.value)
                    finished = True
                    return None
                wait = 0.5 if deadline is None else min(0.5, max(deadline - now, 0.01))
                ready, _, _ = select.select([sock], [], [], wait)
                if not ready:
                    continue
                chunk = sock.recv(256 << 10)
                if not chunk:
                    break
                frames.feed(chunk)
            pgid.flush()
            finished = True
            feeder.join()
            return self._exit_code(exec_id)
        except OSError as exc:
            raise ProviderError(f"the connection to the Docker daemon failed during a command in {self._where}: {exc}") from exc
        finally:
            if not finished and pgid.value is not None:
                try:
                    self._kill_group_exec(pgid.value)
                except ProviderError as exc:
                    log.debug("%s: could not kill process group %s: %s", self._where, pgid.value, exc)
            try:
                sock.close()
            except OSError:
                pass
            feeder.join()

    def _exit_code(self, exec_id: str) -> int:
        deadline = time.monotonic() + self.connect_timeout
        while True:
            try:
                info = self.api.exec_inspect(exec_id)
            except docker.errors.DockerException as exc:
                raise _map(exc, f"reading the exit status of a command in {self._where}") from exc
            if not info.get("Running") and info.get("ExitCode") is not None:
                return int(info["ExitCode"])
            if time.monotonic() > deadline:
                raise ProviderError(f"command in {self._where} ended without an exit status")
            time.sleep(0.01)

    def _kill_group_exec(self, pgid: int | None) -> None:
        """Kill the command's process group: from the host when the daemon is local (works even
        when the container is at its pids limit, where a new exec cannot start), else by an exec."""
        if pgid is None:
            log.warning("%s: timed-out command never reported its process group", self._where)
            return
        if self._kill_group_from_host(pgid):
            return
        try:
            exec_id = self.api.exec_create(self.container, ["/bin/sh", "-c", f"kill -9 -{pgid} 2>/dev/null || kill -9 {pgid}"])["Id"]
            self.api.exec_start(exec_id)
        except docker.errors.DockerException as exc:
            raise _map(exc, f"killing process group {pgid} in {self._where}") from exc


    def _kill_group_from_host(self, pgid: int) -> bool:
        """SIGKILL every process of the container whose in-container process group is ``pgid``,
        found through /proc (same pid namespace as the container's init, ``NSpgid``); repeated
        until none is left, since a member may fork meanwhile. False when the container's
        processes are not visible here (a remote daemon)."""
        try:
            init = self.api.inspect_container(self.container)["State"]["Pid"]
            ns = os.readlink(f"/proc/{init}/ns/pid")
        except (docker.errors.DockerException, OSError, KeyError):
            return False
        for _ in range(50):
            groups = set()
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    if os.readlink(f"/proc/{entry}/ns/pid") != ns:
                        continue
                    with open(f"/proc/{entry}/status") as f:
                        fields = dict(line.split(":", 1) for line in f if ":" in line)
                    if int(fields["NSpgid"].split()[-1]) == pgid:
                        with open(f"/proc/{entry}/stat") as f:
                            groups.add(int(f.read().rsplit(")", 1)[1].split()[2]))    # pgrp, host numbering
                except (OSError, KeyError, ValueError, IndexError):
                    continue
            if not groups:
                return True
            for g in groups:
                try:
                    os.killpg(g, 9)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)
        log.warning("%s: process group %d still has members after repeated kills", self._where, pgid)
        return True


class _Frames:
    """Docker's multiplexed stream: 8-byte headers (stream, 3 zero bytes, big-endian length)."""

    def __init__(self, sinks: dict[int, Callable[[bytes], None]]) -> None:
        self.sinks = sinks
        self.buf = b""

    def feed(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 8:
            stream, size = struct.unpack(">BxxxL", self.buf[:8])
            if len(self.buf) < 8 + size:
                return
            payload, self.buf = self.buf[8:8 + size], self.buf[8 + size:]
            sink = self.sinks.get(stream)
            if sink is not None and payload:
                sink(payload)


class _SocketFeeder:
    """Sends stdin on a thread, then half-closes (the command sees EOF)."""

    def __init__(self, sock: socket.socket, chunks: Iterable[bytes] | None) -> None:
        self.sock = sock
        if chunks is None:
            self._eof()
            self._thread = None
            return
        self._thread = threading.Thread(target=self._send, args=(chunks,), name="vmsandbox-docker-stdin", daemon=True)
        self._thread.start()

    def _eof(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _send(self, chunks: Iterable[bytes]) -> None:
        try:
            for chunk in chunks:
                self.sock.sendall(chunk)
        except OSError:
            return                                   # the command closed its stdin or exited
        self._eof()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()


# -- images from boxes ---------------------------------------------------------------------
def import_box(box: Any, image: Optional[str] = None, base_url: Optional[str] = None) -> str:
    """Make the container image ``image`` (default ``vmsandbox/<box>``) from a box's root file
    system: the qcow2 image to raw, its ext4 tree copied out with ``debugfs rdump`` (no mount,
    no loop device), then ``docker import``. Returns the image id."""
    name = image or f"vmsandbox/{box.name}"
    client = connect(base_url)
    with tempfile.TemporaryDirectory(prefix="vmsandbox-image-") as tmp:
        raw, root = Path(tmp) / "root.raw", Path(tmp) / "root"
        root.mkdir()
        for argv in (["qemu-img", "convert", "-O", "raw", str(box.image), str(raw)],
                     ["debugfs", "-R", f"rdump / {root}", str(raw)]):
            r = subprocess.run(argv, capture_output=True, text=True)
            if r.returncode != 0:
                raise ProviderError(f"making image {name}: {argv[0]} failed: {r.stderr.strip()[-300:]}")
        if not (root / "bin" / "sh").exists():         # debugfs exits 0 even when it read no file system
            raise ProviderError(f"making image {name}: box {box.name!r} has no ext4 root file system with /bin/sh")
        if (root / "tmp").is_dir():
            (root / "tmp").chmod(0o1777)
        tar_path = Path(tmp) / "root.tar"
        with tarfile.open(tar_path, "w") as tar:
            for entry in sorted(root.iterdir()):
                if entry.name != "lost+found":
                    tar.add(entry, arcname=entry.name)
        try:
            try:
                old = client.api.inspect_image(name)["Id"]
            except docker.errors.NotFound:
                old = None
            with open(tar_path, "rb") as f:
                client.api.import_image_from_data(f.read(), repository=name.split(":")[0],
                                                  tag=name.split(":")[1] if ":" in name else "latest",
                                                  changes=[f'LABEL vmsandbox.box="{box.name}"'])
            new = client.api.inspect_image(name)["Id"]
            if old and old != new:                       # the replaced image, unless layers still use it
                try:
                    client.api.remove_image(old)
                except docker.errors.APIError:
                    pass
            return new
        except docker.errors.DockerException as exc:
            raise _map(exc, f"importing image {name}") from exc
        finally:
            client.close()
