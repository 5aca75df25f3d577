"""The nightly VM test farm: a job file, N jobs in linked clones of one prepared snapshot.

Modules: ``spec`` (the job file's schema and matrix expansion), ``base`` (the base snapshot,
reused while its inputs are unchanged), ``job`` (``run_job``: one job in one clone, JSON in and
out), ``runner`` (``Farm``: the local thread-pool scheduler, interruption, ``FarmResult``),
``reports`` (JUnit, HTML, JSON), ``history`` (``farm.db``: runs, jobs, bases, kept states),
``gc`` (expired kept states, clones of dead runs), ``text`` (escaping guest output),
``distributed`` (the same jobs on Celery workers over Redis; imported only with ``--broker``).
"""
from .errors import FarmError
from .job import Control, run_job
from .runner import Farm, FarmResult
from .spec import BaseSpec, FarmSpec, JobSpec, load_farm, loads_farm

__all__ = ["Farm", "FarmResult", "FarmSpec", "JobSpec", "BaseSpec", "FarmError", "load_farm", "loads_farm",
           "run_job", "Control"]
