"""Filter passes as SLURM array jobs (datatrove's ``SlurmPipelineExecutor``): ``data.slurm`` settings
mapped onto the executor's keywords and ``sbatch_args``, submission, waiting for every shard, cancelling.

A pass is one array job over ``data.filter_tasks`` shards; the runner (``runner.py``) builds the pass
and calls :func:`run_on_slurm`, which returns once every shard has its completion marker.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import logging
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from datatrove.executor.slurm import SlurmPipelineExecutor

from distill.errors import DistillError

log = logging.getLogger(__name__)


# -- settings: data.slurm as the executor's keywords and sbatch options -----------------------------------

# sbatch's long options (Slurm 22.05 to 24.11, ``man sbatch``). Those datatrove's executor has no keyword
# for (account, constraint, gres, reservation ...) reach sbatch through its ``sbatch_args``.
SBATCH_OPTIONS = frozenset(
    {
        "account",
        "acctg-freq",
        "array",
        "batch",
        "bb",
        "bbf",
        "begin",
        "chdir",
        "cluster-constraint",
        "clusters",
        "comment",
        "constraint",
        "container",
        "container-id",
        "contiguous",
        "core-spec",
        "cores-per-socket",
        "cpu-freq",
        "cpus-per-gpu",
        "cpus-per-task",
        "deadline",
        "delay-boot",
        "dependency",
        "distribution",
        "error",
        "exclude",
        "exclusive",
        "export",
        "export-file",
        "extra",
        "extra-node-info",
        "get-user-env",
        "gid",
        "gpu-bind",
        "gpu-freq",
        "gpus",
        "gpus-per-node",
        "gpus-per-socket",
        "gpus-per-task",
        "gres",
        "gres-flags",
        "hint",
        "hold",
        "ignore-pbs",
        "input",
        "job-name",
        "kill-on-invalid-dep",
        "licenses",
        "mail-type",
        "mail-user",
        "mcs-label",
        "mem",
        "mem-bind",
        "mem-per-cpu",
        "mem-per-gpu",
        "mincpus",
        "network",
        "nice",
        "no-kill",
        "no-requeue",
        "nodefile",
        "nodelist",
        "nodes",
        "ntasks",
        "ntasks-per-core",
        "ntasks-per-gpu",
        "ntasks-per-node",
        "ntasks-per-socket",
        "open-mode",
        "output",
        "overcommit",
        "oversubscribe",
        "parsable",
        "partition",
        "power",
        "prefer",
        "priority",
        "profile",
        "propagate",
        "qos",
        "quiet",
        "reboot",
        "requeue",
        "reservation",
        "signal",
        "sockets-per-node",
        "spread-job",
        "switches",
        "test-only",
        "thread-spec",
        "threads-per-core",
        "time",
        "time-min",
        "tmp",
        "tres-per-task",
        "uid",
        "use-min-nodes",
        "verbose",
        "wait",
        "wait-all-nodes",
        "wckey",
        "wrap",
    }
)
# sbatch options the executor writes itself, from one of its keywords (a second value would fight it) or for
# the runner (the array of shards, where the logs go, a job that runs at once): what to set instead, if any
SBATCH_SET_BY_EXECUTOR = {
    "mem": "data.slurm.mem_per_cpu_gb",
    "mem-per-cpu": "data.slurm.mem_per_cpu_gb",
    "mem-per-gpu": "data.slurm.mem_per_cpu_gb",
    "nodes": "data.slurm.nodes_per_task",
    "gpus": "data.slurm.gpus_per_task",
    "no-requeue": "data.slurm.requeue=false",
    "output": "data.slurm.slurm_logs_folder",
    "error": "data.slurm.slurm_logs_folder",
    "array": None,
    "dependency": None,
    "export": None,
    "wrap": None,
    "parsable": None,
    "wait": None,
    "test-only": None,
    "hold": None,
}
# executor keywords the runner sets: a pass is one array job over data.filter_tasks shards whose completion
# markers it waits on, so array jobs of a pass must run one after another and skip finished shards
RUNNER_KEYWORDS = {
    "tasks": "data.filter_tasks",
    "pipeline": None,
    "logging_dir": None,
    "job_name": None,
    "skip_completed": None,
    "depends": None,
    "depends_job_id": None,
    "job_id_position": None,
    "job_id_retriever": None,
    "max_array_launch_parallel": None,
}
# where ours differ from datatrove's: no --qos unless asked (its "normal" does not exist on every cluster)
SLURM_DEFAULTS = {"time": "04:00:00", "cpus_per_task": 2, "mem_per_cpu_gb": 2, "qos": None}


class FilterPassExecutor(SlurmPipelineExecutor):
    """datatrove's SLURM executor without its stats-merging job: the runner sums the per-shard stats
    itself, and that job, queued behind the pass, would write into the work dir after the result was
    published and the work dir removed."""

    def launch_merge_stats(self) -> None:
        pass


def executor_keywords() -> dict[str, inspect.Parameter]:
    """The installed datatrove's keywords (read, not listed here, so an upgrade's new ones just work)."""
    params = inspect.signature(FilterPassExecutor.__init__).parameters
    return {n: p for n, p in params.items() if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def slurm_executor_kwargs(settings: Mapping) -> dict:
    """``data.slurm`` as keyword arguments of the executor: a key it names (``-`` or ``_``) is its keyword,
    another sbatch option goes into ``sbatch_args``, ``sbatch_args`` itself is passed on verbatim (options
    newer than this list); a null is the default. Any other key is a user error naming the nearest valid one."""
    keywords = executor_keywords()
    kwargs: dict = {}
    options: dict = {}
    verbatim: dict = {}
    for key, value in settings.items():
        name, option = str(key).replace("-", "_"), str(key).replace("_", "-")
        if value is None:
            continue
        if name in RUNNER_KEYWORDS:
            raise set_elsewhere(key, RUNNER_KEYWORDS[name])
        if name == "sbatch_args":
            if not isinstance(value, Mapping):
                raise DistillError(f"data.slurm.sbatch_args must map sbatch options to values, got {value!r}")
            verbatim = plain(value)
        elif name in keywords:
            kwargs[name] = plain(value)
        elif option in SBATCH_SET_BY_EXECUTOR:
            raise set_elsewhere(key, SBATCH_SET_BY_EXECUTOR[option])
        elif option in SBATCH_OPTIONS:
            if value is not False:  # a flag: true writes `--exclusive`, false leaves it out
                options[option] = "" if value is True else plain(value)
        else:
            raise unknown_setting(key, keywords)
    if verbatim or options:
        kwargs["sbatch_args"] = {**verbatim, **options}
    return with_defaults(kwargs, keywords)


def with_defaults(kwargs: dict, keywords: dict) -> dict:
    kwargs = {**{k: v for k, v in SLURM_DEFAULTS.items() if k in keywords}, **kwargs}
    if not {"env_command", "venv_path", "condaenv"} & kwargs.keys() and "env_command" in keywords:
        # the jobs run datatrove's launcher from the Python environment that submitted them, activated or not
        kwargs["env_command"] = f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH"
    for name, param in keywords.items():
        if param.default is param.empty and name not in kwargs and name not in RUNNER_KEYWORDS:
            raise DistillError(
                f"data.executor=slurm needs data.slurm.{name} (set it in configs/local/ or on the command line)"
            )
    return kwargs


def set_elsewhere(key: str, instead: str | None) -> DistillError:
    hint = f"; set {instead} instead" if instead else ""
    return DistillError(f"data.slurm.{key} is set by the filter runner for each pass{hint}")


def unknown_setting(key: str, keywords: dict) -> DistillError:
    valid = [k for k in keywords if k not in RUNNER_KEYWORDS]
    valid += sorted(o.replace("-", "_") for o in SBATCH_OPTIONS - SBATCH_SET_BY_EXECUTOR.keys())
    near = difflib.get_close_matches(str(key).replace("-", "_"), valid, n=1)
    hint = f" (did you mean data.slurm.{near[0]}?)" if near else ""
    return DistillError(
        f"data.slurm.{key} is neither a keyword of datatrove's SlurmPipelineExecutor nor an sbatch "
        f"option{hint}; other sbatch options go under data.slurm.sbatch_args"
    )


def plain(value):
    """Hydra's DictConfig / ListConfig as dict / list: the executor is pickled into every job."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [plain(v) for v in value]
    return value


# -- submission and waiting -------------------------------------------------------------------------------


def check_submit_host() -> None:
    """Before any work: the passes are submitted with sbatch, so this must be a Slurm submit host."""
    if shutil.which("sbatch") is None:
        raise DistillError("data.executor=slurm: sbatch is not on PATH; run this on a Slurm submit host")


def run_on_slurm(pipeline: list, name: str, logs: Path, *, tasks: int, slurm_kwargs: dict, poll_s: float) -> None:
    """Submit the pass as a SLURM array job (datatrove) over ``tasks`` shards, with ``slurm_kwargs`` from
    :func:`slurm_executor_kwargs`, and wait for every shard's completion marker (see :func:`wait_for_shards`)."""
    executor = FilterPassExecutor(
        pipeline=pipeline, tasks=tasks, logging_dir=str(logs), job_name=f"distill-filter-{name}", **slurm_kwargs
    )
    try:
        # launch_job, not run(): inside any Slurm array task (a swept distill-train), run() would take
        # that task's index for a shard of this pass and run it here
        executor.launch_job()
    except subprocess.CalledProcessError as e:
        raise DistillError(
            f"sbatch refused filter pass {name} (exit {e.returncode}, its message is above); "
            f"script: {logs / 'launch_script.slurm'}"
        ) from None
    try:
        wait_for_shards(executor, name, tasks=tasks, poll_s=poll_s)
    except BaseException:
        # interrupted or failed: a rerun starts the unfinished shards again, and must not find the old
        # ones still running (two writers on one shard)
        if executor.job_id not in (None, -1):
            with contextlib.suppress(OSError):
                subprocess.run(["scancel", str(executor.job_id)], capture_output=True, check=False)
        raise


def wait_for_shards(executor: SlurmPipelineExecutor, name: str, *, tasks: int, poll_s: float) -> None:
    """Until every shard has its completion marker. Looks often at first (a small pass takes seconds),
    then every ``poll_s``. A job that left the queue with shards unfinished failed: after one more
    ``poll_s`` (a shared filesystem may show the last markers late) that is an error, not a hang."""
    delay, left_queue_at = min(1.0, poll_s), None
    while incomplete := executor.get_incomplete_ranks():
        if slurm_job_queued(executor.job_id):
            left_queue_at = None
        elif left_queue_at is None:
            left_queue_at = time.monotonic()
        elif time.monotonic() - left_queue_at >= poll_s:
            raise DistillError(
                f"filter pass {name}: SLURM job {executor.job_id} ended with {len(incomplete)} of "
                f"{tasks} shards unfinished; their logs are in {executor.slurm_logs_folder}"
            )
        log.info(
            "filter pass %s: %d of %d shards unfinished (SLURM job %s)", name, len(incomplete), tasks, executor.job_id
        )
        time.sleep(delay)
        delay = min(delay * 2, poll_s)


def slurm_job_queued(job_id: str) -> bool:
    """Whether a task of the job is pending, running or requeued (squeue lists only those by default)."""
    try:
        proc = subprocess.run(
            ["squeue", "--noheader", f"--jobs={job_id}", "--format=%T"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:  # a busy controller says nothing about the job
        return True
    if proc.returncode != 0:  # a job the controller has already forgotten is an "Invalid job id"
        return "Invalid job id" not in proc.stderr
    return bool(proc.stdout.strip())
