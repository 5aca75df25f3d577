"""A farm worker on the test double provider (no guests), for bench_farm_distributed.py and
quick checks of the Celery/Redis path: ``python bench/farm_fake_worker.py BROKER NAME SLOTS STATE_DIR``.
A job command ``sleep S`` takes S seconds; everything else answers at once."""
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vmsandbox import testing  # noqa: E402
from vmsandbox.farm.distributed import run_worker  # noqa: E402
from vmsandbox.models import ExecutionResult  # noqa: E402

_plain = testing.FakeSession.execute


def _execute(self, command, timeout=None, working_dir=None, env=None, stdin=None, max_output=0,
             on_stdout=None, on_stderr=None):
    m = re.fullmatch(r"sleep ([0-9.]+)", command)
    if not m:
        return _plain(self, command, timeout, working_dir, env, stdin, max_output, on_stdout, on_stderr)
    t0 = time.monotonic()
    time.sleep(float(m.group(1)))
    if on_stdout:
        on_stdout(b"slept\n")
    return ExecutionResult(stdout="slept\n", stderr="", exit_code=0, duration=time.monotonic() - t0)


def main() -> None:
    broker, name, slots, state = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    state.mkdir(parents=True, exist_ok=True)
    testing.FakeSession.execute = _execute
    core = testing.fake_core(state)
    run_worker(core, broker, name, slots, [], visibility_timeout=3600, say=lambda m: print(m, file=sys.stderr))


if __name__ == "__main__":
    main()
