"""The farm across hosts: Celery workers on a Redis broker, one task per job.

Owns the Celery app (JSON only, acks late, reject on worker loss, prefetch 1, a visibility
timeout), the task (validate the payload like a job file, fetch the base's uploads, prepare the
base once per host and digest, ``job.run_job``, ship logs and artifacts back), the worker
(``vmsandbox farm worker``: clean-up of its own orphans at start, heartbeat, Prometheus metrics)
and the submitter (``run_distributed``: the same ``FarmResult``, history and reports as the local
runner). Inputs and outputs travel as content-addressed blobs in Redis (``put_blob``/``get_blob``).
Celery is imported here only, so ``vmsandbox`` without ``--broker`` never loads it.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import os
import re
import shutil
import socket
import tarfile
import tempfile
import threading
import time
from itertools import combinations
from pathlib import Path
from typing import Any, Callable, Optional

from ..exceptions import ConfigError, SandboxError
from .errors import FarmError
from .spec import JOB_NAME_RE, TAG_RE, BaseSpec, FarmSpec, JobSpec, _job_fields, _Lines

log = logging.getLogger("vmsandbox.farm")

TASK = "vmsandbox.farm.job"
KEY = "vmsandbox:farm:"
CHUNK = 1 << 20
BLOB_TTL = 2 * 86400
BLOB_MAX = 512 << 20                 # one blob (uploads of a base, or one job's logs and artifacts)
HEARTBEAT = 5.0
RUN_ID_RE = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")
DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_WORKER_TAGS = 6


class BrokerError(FarmError):
    """The broker cannot be reached (or was lost for longer than the submitter waits)."""


# -- the broker ------------------------------------------------------------------------------
def redis_client(broker: str, timeout: float = 5.0):
    import redis
    if not broker.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{broker!r} is not a Redis URL (redis://HOST:PORT/DB or rediss://...)", "broker")
    return redis.Redis.from_url(broker, socket_timeout=timeout, socket_connect_timeout=timeout,
                                health_check_interval=10)


def check_broker(broker: str) -> Any:
    """A connected client, or BrokerError naming the broker (a down broker at submit time)."""
    import redis
    r = redis_client(broker)
    try:
        r.ping()
    except redis.RedisError as exc:
        raise BrokerError(f"the broker {_safe_url(broker)} cannot be reached: {exc}") from None
    return r


def _safe_url(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)


def queue_for(tags) -> str:
    """The queue of a job with these tags (``farm`` when it has none)."""
    return "farm" + "".join("." + t for t in sorted(tags))


def worker_queues(tags) -> list[str]:
    """Every queue a worker with these tags serves: one per subset of its tags."""
    tags = sorted(set(tags))
    return [queue_for(c) for n in range(len(tags) + 1) for c in combinations(tags, n)]


def make_app(broker: str, visibility_timeout: float = 7200):
    """The Celery app: JSON only, acks late, reject on worker loss, one message per free slot."""
    from celery import Celery
    app = Celery("vmsandbox-farm", broker=broker, set_as_current=False)
    app.conf.update(
        task_serializer="json", accept_content=["json"], result_serializer="json", event_serializer="json",
        task_acks_late=True, task_reject_on_worker_lost=True, task_ignore_result=True,
        worker_prefetch_multiplier=1, task_default_queue="farm", worker_hijack_root_logger=False,
        broker_transport_options={"visibility_timeout": int(visibility_timeout)},
        broker_connection_retry_on_startup=True, worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    app.task(name=TASK, bind=True, acks_late=True, reject_on_worker_lost=True)(_task)
    return app


# -- blobs ------------------------------------------------------------------------------------
def put_blob(r, data: bytes, ttl: int = BLOB_TTL, limit: int = BLOB_MAX, what: str = "blob") -> str:
    """Store ``data`` once under its sha256 (chunked list, ``ttl`` seconds); returns the digest."""
    if len(data) > limit:
        raise FarmError(f"{what} is {len(data)} bytes, over the {limit}-byte cap of blobs in the broker "
                        "(see docs/scale-out.md: larger farms keep blobs in an object store)")
    digest = hashlib.sha256(data).hexdigest()
    key = KEY + "blob:" + digest
    if r.expire(key, ttl):                    # already there: keep it alive
        return digest
    tmp = f"{key}:tmp:{os.getpid()}:{threading.get_ident()}"
    pipe = r.pipeline()
    pipe.delete(tmp)
    for i in range(0, len(data), CHUNK):
        pipe.rpush(tmp, data[i:i + CHUNK])
    if not data:
        pipe.rpush(tmp, b"")
    pipe.expire(tmp, ttl)
    pipe.rename(tmp, key)
    pipe.execute()
    return digest


def get_blob(r, digest: str) -> bytes:
    if not DIGEST_RE.match(digest):
        raise FarmError(f"{digest!r} is not a blob digest")
    data = b"".join(r.lrange(KEY + "blob:" + digest, 0, -1))
    if hashlib.sha256(data).hexdigest() != digest:
        raise FarmError(f"blob {digest[:12]} is missing or damaged in the broker (expired? ttl {BLOB_TTL} s)")
    return data


def pack(path: Path, arcname: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(path, arcname=arcname)
    return buf.getvalue()


def unpack(data: bytes, dest: Path) -> list[str]:
    """Extract a tar safely (no absolute paths, links out, devices); returns refused members."""
    refused = []
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar:
            try:
                tar.extract(m, dest, filter="data")
            except tarfile.FilterError:
                refused.append(m.name)
    return refused


def cached_upload(r, cache: Path, digest: str, name: str) -> Path:
    """The upload ``digest`` unpacked on this host: fetched once per digest, then reused."""
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    done = cache / digest
    with open(cache / f"{digest}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_dir():
            tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=cache))
            try:
                unpack(get_blob(r, digest), tmp)
                tmp.rename(done)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    return done / name if name != "." else done


# -- the task payload --------------------------------------------------------------------------
def make_payload(spec: FarmSpec, job: JobSpec, run_id: str, index: int, uploads: list) -> dict:
    b = spec.base
    return {"v": 1, "run_id": run_id, "index": index, "farm": spec.name,
            "base": {"box": b.box, "setup": b.setup, "upload": uploads, "cpu": b.cpu, "memory": b.memory,
                     "disk": b.disk, "network": b.network, "timeout": b.timeout},
            "job": job.to_dict()}


def validate_payload(p: Any) -> tuple[str, int, FarmSpec, JobSpec, list]:
    """Check a task's payload as strictly as a job file; raises ConfigError naming what is wrong."""
    lines = _Lines("task")
    if not isinstance(p, dict) or set(p) != {"v", "run_id", "index", "farm", "base", "job"} or p["v"] != 1:
        raise ConfigError("the task payload is not a version-1 farm job", "task")
    if not isinstance(p["run_id"], str) or not RUN_ID_RE.match(p["run_id"]):
        raise ConfigError(f"{p['run_id']!r} is not a run id", "task.run_id")
    if not isinstance(p["index"], int) or isinstance(p["index"], bool) or not 0 <= p["index"] < 10000:
        raise ConfigError(f"{p['index']!r} is not a job index", "task.index")
    if not isinstance(p["farm"], str) or not re.match(r"^[a-z0-9][a-z0-9-]{0,23}$", p["farm"]):
        raise ConfigError(f"{p['farm']!r} is not a farm name", "task.farm")
    b, j = p["base"], p["job"]
    if not isinstance(b, dict) or set(b) != {"box", "setup", "upload", "cpu", "memory", "disk", "network",
                                             "timeout"}:
        raise ConfigError("the base is not box, setup, upload and the machine", "task.base")
    if not isinstance(b["box"], str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", b["box"]):
        raise ConfigError(f"{b['box']!r} is not a box name", "task.base.box")
    if b["setup"] is not None and not isinstance(b["setup"], str):
        raise ConfigError("must be a string", "task.base.setup")
    machine = _job_fields({k: b[k] for k in ("cpu", "memory", "disk", "network", "timeout")}, "task.base", lines)
    ups = b["upload"]
    if not isinstance(ups, list) or not all(
            isinstance(u, list) and len(u) == 3 and isinstance(u[0], str) and DIGEST_RE.match(u[0])
            and isinstance(u[1], str) and (u[1] == "." or re.match(r"^[^/\0]{1,255}$", u[1]) and u[1] != "..")
            and isinstance(u[2], str) and u[2].startswith("/") and u[2].rstrip("/") for u in ups):
        raise ConfigError("uploads must be [digest, name, absolute guest path]", "task.base.upload")
    fields = set(JobSpec.__dataclass_fields__)
    if not isinstance(j, dict) or not set(j) <= fields or not {"name", "run"} <= set(j):
        extra = sorted(set(j) - fields) if isinstance(j, dict) else []
        raise ConfigError(f"not a job (unknown keys: {extra})" if extra else "not a job", "task.job")
    if not isinstance(j["name"], str) or not JOB_NAME_RE.match(j["name"]):
        raise ConfigError(f"{j['name']!r} is not a job name", "task.job.name")
    if not isinstance(j.get("line", 0), int):
        raise ConfigError("must be a number", "task.job.line")
    given = {k: v for k, v in j.items() if k not in ("name", "line") and not (k == "workdir" and v is None)}
    typed = _job_fields(given, "task.job", lines)
    job = JobSpec(name=j["name"], line=j.get("line", 0), **{k: tuple(v) if isinstance(v, list) else v
                                                            for k, v in typed.items()})
    base = BaseSpec(box=b["box"], setup=b["setup"], upload=(), cpu=machine["cpu"], memory=machine["memory"],
                    disk=machine["disk"], network=machine["network"], timeout=machine["timeout"])
    return p["run_id"], p["index"], FarmSpec(name=p["farm"], base=base, jobs=(job,)), job, ups


# -- the worker side -------------------------------------------------------------------------
class _Worker:
    """What a worker process holds: its core, broker client, bases prepared, slot counters."""

    def __init__(self, core, broker: str, name: str, slots: int, tags: list, visibility_timeout: float) -> None:
        self.core, self.broker, self.name, self.slots, self.tags = core, broker, name, slots, tags
        self.visibility_timeout = visibility_timeout
        self.r = redis_client(broker)
        self.lock = threading.Lock()
        self.bases: dict[str, Any] = {}
        self.base_locks: dict[str, threading.Lock] = {}
        self.busy = 0
        self.counts = {"done": 0, "failed": 0, "rejected": 0}
        self.stop = threading.Event()
        self.poke = threading.Event()         # slot use changed: publish the heartbeat now

    def beat(self) -> None:
        self.r.set(KEY + "worker:" + self.name, json.dumps(
            {"name": self.name, "slots": self.slots, "busy": self.busy, "tags": self.tags, "pid": os.getpid(),
             "host": socket.gethostname(), "at": time.time(), "visibility_timeout": self.visibility_timeout,
             **self.counts}), ex=int(HEARTBEAT * 4))


WORKER: Optional[_Worker] = None


#: how long a worker keeps reconnecting to a broker that went away before giving a job up
WORKER_PATIENCE = 300.0


def _emit(r, run_id: str, event: dict) -> None:
    key = KEY + "events:" + run_id

    def send() -> None:
        pipe = r.pipeline()
        pipe.rpush(key, json.dumps(event))
        pipe.expire(key, BLOB_TTL)
        pipe.execute()
    _retrying(send, "sending a job's event", WORKER_PATIENCE)


def _task(self, payload):
    """One farm job on this host (the Celery task body)."""
    w = WORKER
    if w is None:                               # pragma: no cover - only vmsandbox farm worker runs tasks
        raise RuntimeError("the farm task runs only inside `vmsandbox farm worker`")
    try:
        run_id, index, spec, job, uploads = validate_payload(payload)
    except ConfigError as exc:
        w.counts["rejected"] += 1
        _metric("rejected")
        run_id = payload.get("run_id") if isinstance(payload, dict) else None
        name = (payload.get("job") or {}).get("name") if isinstance(payload, dict) and \
            isinstance(payload.get("job"), dict) else None
        w.poke.set()
        log.error("farm worker %s: rejected a malformed task: %s", w.name, exc)
        w.core.audit("farm_task", "rejected", reason=str(exc))
        if isinstance(run_id, str) and RUN_ID_RE.match(run_id) and isinstance(name, str) and JOB_NAME_RE.match(name):
            _emit(w.r, run_id, {"job": name, "state": "done", "worker": w.name,
                                "outcome": {"name": name, "status": "error", "worker": w.name,
                                            "reason": f"rejected by worker {w.name}: malformed task: {exc}"}})
        return None
    with w.lock:
        w.busy += 1
    w.poke.set()
    _metric("start")
    try:
        return _run_task(w, run_id, index, spec, job, uploads)
    except Exception as exc:        # a bug or a broker error here must still give the job an outcome
        log.exception("farm worker %s: job %s crashed", w.name, job.name)
        try:
            _emit(w.r, run_id, {"job": job.name, "state": "done", "worker": w.name, "outcome": {
                "name": job.name, "status": "error", "worker": w.name,
                "reason": f"the worker {w.name} failed: {type(exc).__name__}: {exc}"}})
        except Exception:
            pass                    # the broker is gone too: the submitter's own checks end its wait
        return None
    finally:
        with w.lock:
            w.busy -= 1
        w.poke.set()
        _metric("end")


def _run_task(w: _Worker, run_id: str, index: int, spec: FarmSpec, job: JobSpec, uploads: list) -> None:
    from .base import prepare_base
    from .history import History, history_path
    from .job import Control, run_job
    attempt = _retrying(lambda: w.r.incr(f"{KEY}attempt:{run_id}:{index}"), "counting attempts", WORKER_PATIENCE)
    _retrying(lambda: w.r.expire(f"{KEY}attempt:{run_id}:{index}", BLOB_TTL), "counting attempts", WORKER_PATIENCE)

    def emit(job_name: str, state: str, info: dict) -> None:
        _emit(w.r, run_id, {"job": job_name, "state": state, "info": info, "worker": w.name})
    emit(job.name, "starting", {"worker": w.name})
    work = Path(w.core.state_dir) / "farm-work" / run_id
    history = History(history_path(w.core.state_dir))
    try:
        key = json.dumps(spec.base.__dict__ | {"upload": uploads}, sort_keys=True, default=str)
        try:
            base = _base_for(w, key, spec, uploads, history, prepare_base)
        except (SandboxError, OSError) as exc:
            outcome = {"name": job.name, "status": "error", "reason": f"the base could not be prepared on "
                       f"worker {w.name}: {exc}"}
        else:
            ctx = {"run_id": run_id, "index": index, "snapshot": base.snapshots[index % len(base.snapshots)],
                   "outdir": str(work), "debug_prefix": f"on {w.name}: vmsandbox --state-dir {w.core.state_dir}"}
            outcome = run_job(w.core, job.to_dict(), ctx, Control(on_state=emit))
            if outcome.get("kept"):
                k = outcome["kept"]
                history.keep(k["snapshot"], k["sandbox"], run_id, job.name, k["expires_at"])
            try:
                _ship_outputs(w, work / job.name, outcome)
            except Exception as exc:        # the result stands; say why its files did not come back
                outcome.setdefault("artifact_notes", []).append(f"logs and artifacts not sent back: {exc}")
        outcome["worker"] = w.name
        if attempt > 1:
            outcome["retried_after_worker_loss"] = attempt - 1
            outcome.setdefault("artifact_notes", []).insert(0, "retried after worker loss")
        w.counts["done" if outcome["status"] == "passed" else "failed"] += 1
        _metric("passed" if outcome["status"] == "passed" else "failed")
        _emit(w.r, run_id, {"job": job.name, "state": "done", "worker": w.name, "outcome": outcome})
    finally:
        history.close()
        shutil.rmtree(work / job.name, ignore_errors=True)


def _base_for(w: _Worker, key: str, spec: FarmSpec, uploads: list, history, prepare_base):
    """One preparation per host and base inputs; later tasks reuse it (prepare_base locks per farm)."""
    with w.lock:
        lk = w.base_locks.setdefault(key, threading.Lock())
    with lk:
        if key not in w.bases:
            cache = Path(w.core.state_dir) / "farm-blobs"
            up = tuple((str(_retrying(lambda: cached_upload(w.r, cache, d, n), "fetching the uploads",
                                      WORKER_PATIENCE)), remote) for d, n, remote in uploads)
            full = FarmSpec(name=spec.name, base=BaseSpec(**{**spec.base.__dict__, "upload": up}), jobs=spec.jobs)
            w.bases[key] = prepare_base(w.core, history, full)
        return w.bases[key]


def _ship_outputs(w: _Worker, job_dir: Path, outcome: dict) -> None:
    """Logs and artifacts go back as one blob; the submitter unpacks it where the local runner would."""
    outcome["worker_dir"] = str(job_dir)
    if not job_dir.is_dir():
        return
    data = pack(job_dir, ".")
    if len(data) > BLOB_MAX:
        for sub in job_dir.glob("artifacts"):
            shutil.rmtree(sub, ignore_errors=True)
        outcome.setdefault("artifact_notes", []).append(
            f"artifacts were {len(data)} bytes, over the {BLOB_MAX}-byte blob cap: only the logs came back")
        outcome["artifacts"], outcome["junit_files"] = [], []
        data = pack(job_dir, ".")
    outcome["output_blob"] = _retrying(lambda: put_blob(w.r, data, what=f"the outputs of job {outcome['name']}"),
                                       "sending the outputs", WORKER_PATIENCE)


# metrics: created on the worker only (prometheus_client is a dependency already)
_METRICS: dict = {}


def _metric(what: str) -> None:
    m = _METRICS
    if not m:
        return
    if what == "start":
        m["running"].inc()
    elif what == "end":
        m["running"].dec()
    elif what == "passed":
        m["done"].inc()
    elif what == "failed":
        m["failed"].inc()
    elif what == "rejected":
        m["rejected"].inc()


def _start_metrics(port: int, slots: int) -> None:
    from prometheus_client import Counter, Gauge, start_http_server
    _METRICS.update(running=Gauge("vmsandbox_farm_jobs_running", "farm jobs running on this worker"),
                    done=Counter("vmsandbox_farm_jobs_passed", "farm jobs that passed on this worker"),
                    failed=Counter("vmsandbox_farm_jobs_failed", "farm jobs that failed or errored on this worker"),
                    rejected=Counter("vmsandbox_farm_tasks_rejected", "malformed tasks rejected"),
                    slots=Gauge("vmsandbox_farm_slots", "job slots of this worker"))
    _METRICS["slots"].set(slots)
    start_http_server(port, addr="127.0.0.1")


def _heartbeat(w: _Worker) -> None:
    while True:
        w.poke.wait(HEARTBEAT)
        w.poke.clear()
        if w.stop.is_set():
            return
        try:
            w.beat()
        except Exception as exc:            # the broker may be down for a while: keep beating
            log.warning("farm worker %s: heartbeat failed: %s", w.name, exc)


def clean_orphans(core) -> list[str]:
    """At worker start: this state directory's farm clones that no kept state accounts for
    (a worker killed mid-job left them), then the core's own gc. Returns what was removed."""
    from .gc import farm_gc
    from .history import History, history_path
    from .job import destroy_clone
    h = History(history_path(core.state_dir))
    try:
        kept = {k["sandbox"] for k in h.kept()}
    finally:
        h.close()
    done = []
    for info in core.list_sandboxes():
        if info.name.startswith("fm-") and info.name not in kept:
            destroy_clone(core, info.id)
            done.append(f"orphan clone {info.name}")
    shutil.rmtree(Path(core.state_dir) / "farm-work", ignore_errors=True)
    return done + farm_gc(core) + core.gc()


def run_worker(core, broker: str, name: str, slots: int, tags: list, visibility_timeout: float = 7200,
               metrics_port: int | None = None, say: Callable[[str], None] = print) -> None:
    """``vmsandbox farm worker``: serve this host's tag queues until stopped (SIGTERM: warm stop)."""
    global WORKER
    for t in tags:
        if not TAG_RE.match(t):
            raise ConfigError(f"{t!r} is not a tag (1-32 of a-z 0-9 _ -)", "tags")
    if len(set(tags)) > MAX_WORKER_TAGS:
        raise ConfigError(f"at most {MAX_WORKER_TAGS} tags per worker", "tags")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$", name):
        raise ConfigError(f"{name!r} is not a worker name", "name")
    check_broker(broker)
    lockf = open(Path(core.state_dir) / "locks" / "farm-worker.lock", "a")
    try:
        fcntl.flock(lockf, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise FarmError(f"another farm worker serves {core.state_dir} (one worker per state directory)") from None
    for line in clean_orphans(core):
        say(f"farm worker {name}: removed {line}")
    w = WORKER = _Worker(core, broker, name, slots, sorted(set(tags)), visibility_timeout)
    if metrics_port:
        _start_metrics(metrics_port, slots)
    hb = threading.Thread(target=_heartbeat, args=(w,), daemon=True, name="farm-heartbeat")
    w.beat()
    hb.start()
    app = make_app(broker, visibility_timeout)
    queues = ",".join(worker_queues(tags))
    say(f"farm worker {name}: {slots} slot(s), queues {queues}")
    try:
        app.worker_main(["worker", "--pool=threads", f"--concurrency={slots}", "-Q", queues, "-n", f"farm@{name}",
                         "--without-gossip", "--without-mingle", "--loglevel=INFO", "-O", "fair"])
    finally:
        w.stop.set()
        w.poke.set()
        try:
            w.r.delete(KEY + "worker:" + name)
        except Exception:
            pass
        lockf.close()


def list_workers(broker: str) -> list[dict]:
    r = check_broker(broker)
    out = []
    for key in r.scan_iter(KEY + "worker:*", count=1000):
        raw = r.get(key)
        if raw:
            d = json.loads(raw)
            d["age"] = round(time.time() - d.get("at", 0), 1)
            out.append(d)
    return sorted(out, key=lambda d: d["name"])


# -- the submitter ------------------------------------------------------------------------------
def _retrying(fn: Callable, what: str, patience: float):
    """Call ``fn`` through a broker that may drop: reconnect with backoff for ``patience`` s, then BrokerError."""
    import redis
    from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential
    try:
        for attempt in Retrying(retry=retry_if_exception_type(redis.ConnectionError) |
                                retry_if_exception_type(redis.TimeoutError),
                                stop=stop_after_delay(patience), wait=wait_exponential(min=0.5, max=5), reraise=True):
            with attempt:
                return fn()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BrokerError(f"lost the broker while {what} and could not reconnect within {patience:g} s: "
                          f"{exc}") from None


def check_visibility(workers: list, jobs: list) -> None:
    """Refuse a run whose longest job could outlive a worker's visibility timeout: Redis would
    hand that job to a second worker while the first still runs it."""
    longest = max(jobs, key=lambda j: j.timeout)
    for w in workers:
        vt = w.get("visibility_timeout") or 0
        if vt and longest.timeout + 60 > vt:
            raise FarmError(f"job {longest.name!r} may run {longest.timeout:g} s, too close to the visibility "
                            f"timeout of worker {w['name']} ({vt:g} s): it would be started twice "
                            "(start the workers with a larger --visibility-timeout)")


def pack_uploads(r, spec: FarmSpec) -> list:
    """Each upload packed once into a content-addressed blob: ``[[digest, name, guest path], ...]``."""
    import redis
    out = []
    for local, remote in spec.base.upload:
        p = Path(local)
        name = "." if p.is_dir() else p.name
        try:
            out.append([put_blob(r, pack(p, name), what=f"upload {local}"), name, remote])
        except (redis.ConnectionError, redis.TimeoutError):
            raise                                # the caller reconnects and retries
        except redis.RedisError as exc:          # e.g. OOM: maxmemory reached
            raise FarmError(f"the broker refused upload {local}: {exc}") from None
    return out


def run_distributed(farm, core, broker: str, outdir: str | os.PathLike = "farm-out", only: list | None = None,
                    on_event=None, reports: dict | None = None, patience: float = 60.0,
                    deadline: float | None = None):
    """Submit every job of ``farm`` (a ``Farm``) to the workers on ``broker`` and collect them into the
    same ``FarmResult``, history and reports as ``Farm.run``. BrokerError when the broker is down."""
    from .history import History, history_path
    from .runner import FarmResult, _skipped, _write_reports, new_run_id
    spec = farm.spec
    r = check_broker(broker)
    jobs = list(spec.jobs)
    if only:
        unknown = [n for n in only if n not in {j.name for j in jobs}]
        if unknown:
            raise ConfigError(f"no job named {unknown[0]!r}", "only")
        jobs = [j for j in jobs if j.name in only]
    check_visibility(list_workers(broker), jobs)
    emit = on_event or (lambda *_a: None)
    run_id = new_run_id()
    run_dir = Path(outdir).resolve() / run_id
    run_dir.mkdir(parents=True)
    history = History(history_path(core.state_dir))
    history.start_run(run_id, spec.name, spec.source, str(run_dir), [j.name for j in jobs])
    core.audit("farm_run", "started", run=run_id, farm=spec.name, jobs=len(jobs), broker=_safe_url(broker))
    started, t0 = time.time(), time.monotonic()
    result = FarmResult(run_id=run_id, farm=spec.name, status="error", started_at=started, duration=0.0,
                        outdir=str(run_dir), base={}, source=spec.source)
    outcomes: dict[str, dict] = {}
    limit = deadline or (max(j.timeout * (j.retries + 1) * (j.retry_on_failure + 1) for j in jobs) * len(jobs) + 3600)
    try:
        emit("", "base", {"message": "packing the base's uploads"})
        uploads = _retrying(lambda: pack_uploads(r, spec), "storing the uploads", patience)
        app = make_app(broker)
        # a broker restarted without its data forgets the queued jobs: this marker tells the submitter
        _retrying(lambda: r.set(KEY + "run:" + run_id, "1", ex=int(limit) + BLOB_TTL), "submitting", patience)
        for i, j in enumerate(jobs):
            payload = make_payload(spec, j, run_id, i, uploads)
            _retrying(lambda: app.send_task(TASK, args=[payload], queue=queue_for(j.tags)), "submitting", patience)
            emit(j.name, "queued", {})
        emit("", "base", {"message": f"{len(jobs)} job(s) submitted to {_safe_url(broker)}"})
        _collect(r, run_id, jobs, run_dir, history, emit, outcomes, patience, limit)
        r.delete(KEY + "run:" + run_id)
        result.status = "passed" if all(o["status"] == "passed" for o in outcomes.values()) else "failed"
    except KeyboardInterrupt:
        result.status = "interrupted"
    except SandboxError as exc:
        result.status, result.error = "error", str(exc)
    finally:
        result.jobs = [outcomes.get(j.name) or _skipped(j) for j in jobs]
        result.duration = round(time.monotonic() - t0, 3)
        result.reports = _write_reports(result, reports or {})
        history.finish_run(run_id, result.status, {**result.counts(), "duration": result.duration,
                                                   "message": result.error}, result.reports)
        history.close()
        core.audit("farm_run", result.status, run=run_id, farm=spec.name, **result.counts())
    return result


def _collect(r, run_id: str, jobs: list, run_dir: Path, history, emit, outcomes: dict, patience: float,
             limit: float) -> None:
    """Read the run's events until every job has its one outcome (duplicates after a redelivery are dropped)."""
    key = KEY + "events:" + run_id
    names = {j.name for j in jobs}
    end = time.monotonic() + limit
    no_worker_since = None
    last_check = 0.0
    while len(outcomes) < len(jobs):
        if time.monotonic() > end:
            raise FarmError(f"the run passed its deadline of {limit:g} s with {len(jobs) - len(outcomes)} job(s) "
                            "unfinished")
        got = _retrying(lambda: r.blpop([key], timeout=1), "waiting for results", patience)
        if time.monotonic() - last_check > HEARTBEAT:
            last_check = time.monotonic()
            alive = _retrying(lambda: any(True for _ in r.scan_iter(KEY + "worker:*", count=1000)),
                              "listing workers", patience)
            no_worker_since = None if alive else (no_worker_since or time.monotonic())
            if not _retrying(lambda: r.exists(KEY + "run:" + run_id), "checking the run", patience):
                raise BrokerError("the broker lost this run's queued jobs (restarted without persistence?); "
                                  f"{len(jobs) - len(outcomes)} job(s) unfinished")
            if no_worker_since and time.monotonic() - no_worker_since > 120:
                raise FarmError("no farm worker has been alive on the broker for 120 s "
                                "(start one: vmsandbox farm worker --broker URL)")
        if not got:
            continue
        try:
            ev = json.loads(got[1])
        except ValueError:
            continue
        name = ev.get("job")
        if name not in names or name in outcomes:
            continue
        if ev.get("state") == "done":
            outcome = _land(r, ev["outcome"], run_dir / name)
            outcomes[name] = outcome
            history.job_update(run_id, name, outcome["status"], outcome=outcome)
            emit(name, outcome["status"], {"duration": outcome.get("duration", 0), "reason": outcome.get("reason"),
                                           "flaky": outcome.get("flaky"), "worker": outcome.get("worker")})
        elif ev.get("state") in ("starting", "running", "retrying"):
            history.job_update(run_id, name, ev["state"])
            emit(name, ev["state"], {**(ev.get("info") or {}), "worker": ev.get("worker")})


def _land(r, outcome: dict, job_dir: Path) -> dict:
    """Unpack a job's outputs under the submitter's run directory and point the outcome's paths there."""
    from .runner import _skipped
    base = _skipped(type("J", (), {"name": outcome.get("name", "?"), "run": "", "line": 0})())
    outcome = {**base, **outcome}
    blob = outcome.pop("output_blob", None)
    worker_dir = outcome.pop("worker_dir", None)
    if blob and worker_dir:
        try:
            refused = unpack(get_blob(r, blob), job_dir)
            if refused:
                outcome["artifact_notes"].append(f"refused {len(refused)} member(s) of the outputs' archive")
        except (FarmError, tarfile.TarError, OSError) as exc:
            outcome["artifact_notes"].append(f"the job's logs and artifacts could not be fetched: {exc}")

        def moved(p: str) -> str:
            return str(job_dir / os.path.relpath(p, worker_dir)) if p.startswith(worker_dir) else p
        outcome["logs"] = {k: moved(v) for k, v in outcome.get("logs", {}).items()}
        outcome["artifacts"] = [{**a, "local": moved(a["local"])} for a in outcome.get("artifacts", [])]
        outcome["junit_files"] = [moved(p) for p in outcome.get("junit_files", [])]
    return outcome
