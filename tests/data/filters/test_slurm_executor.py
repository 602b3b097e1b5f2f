"""data.executor=slurm: ``data.slurm`` settings as datatrove's SlurmPipelineExecutor keywords and sbatch
options, and whole filter runs against datatrove's real SLURM executor (sbatch replaced; a real cluster:
tests/slurm/)."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from distill.data.filters import slurm_executor
from distill.data.filters.runner import ExecutorSpec
from distill.errors import DistillError
from tests.data.filters.helpers import KEPT, run


def pass_executor(tmp_path: Path, settings) -> slurm_executor.FilterPassExecutor:
    """The executor a pass would submit with these ``data.slurm`` settings (nothing is submitted)."""
    spec = ExecutorSpec("slurm", tasks=2, slurm=settings)
    return slurm_executor.FilterPassExecutor(
        pipeline=[], tasks=2, logging_dir=str(tmp_path / "logs"), job_name="pass0", **spec.slurm_kwargs
    )


def test_slurm_without_a_partition_is_a_user_error(tmp_path):
    with pytest.raises(DistillError, match="data.slurm.partition"):
        run(tmp_path, executor=ExecutorSpec("slurm", tasks=2))


def test_slurm_settings_reach_the_executor_keywords_or_sbatch(tmp_path):
    settings = OmegaConf.create(
        {  # as Hydra hands them over
            "partition": "debug",
            "time": "00:10:00",
            "cpus-per-task": 1,
            "mem_per_cpu_gb": 3,
            "workers": 1,
            "account": "research",
            "qos": "high",
            "constraint": "a100",
            "gres": "gpu:1",
            "exclusive": True,
            "requeue": False,
            "reservation": None,
            "overcommit": False,
            "sbatch_args": {"gpu-bind": "closest", "account": "not-this-one"},
        }
    )
    executor = pass_executor(tmp_path, settings)
    assert (executor.partition, executor.time, executor.cpus_per_task, executor.mem_per_cpu_gb) == (
        "debug",
        "00:10:00",
        1,
        3,
    )
    args = executor.get_sbatch_args(max_array=2)
    assert {k: args[k] for k in ("partition", "time", "cpus-per-task", "mem-per-cpu", "qos", "array")} == {
        "partition": "debug",
        "time": "00:10:00",
        "cpus-per-task": 1,
        "mem-per-cpu": "3G",
        "qos": "high",
        "array": "0-1%1",
    }
    # sbatch options datatrove has no keyword for: a named key wins over the same one in sbatch_args
    assert {k: args[k] for k in ("account", "constraint", "gres", "exclusive", "gpu-bind")} == {
        "account": "research",
        "constraint": "a100",
        "gres": "gpu:1",
        "exclusive": "",
        "gpu-bind": "closest",
    }
    assert not {"requeue", "reservation", "overcommit"} & args.keys()  # false flags and nulls are left out
    script = executor.get_launch_file_contents(args, "true")
    assert "#SBATCH --account=research\n" in script and "#SBATCH --exclusive\n" in script
    assert type(executor._sbatch_args) is dict  # plain containers: the executor is pickled into every job


def test_slurm_defaults_and_no_qos_unless_asked(tmp_path):
    """datatrove's default qos "normal" does not exist on every cluster: the cluster's own default applies."""
    args = pass_executor(tmp_path, {"partition": "debug"}).get_sbatch_args()
    assert (args["time"], args["cpus-per-task"], args["mem-per-cpu"]) == ("04:00:00", 2, "2G")
    assert "qos" not in args and "account" not in args


def test_slurm_jobs_run_the_submitting_python_environment(tmp_path):
    """The jobs find datatrove's launcher in the venv that submitted them, even when it is not activated;
    an environment the user names replaces that."""
    script = pass_executor(tmp_path, {"partition": "debug"}).get_launch_file_contents({}, "launch_pickled_pipeline")
    assert f"export PATH={Path(sys.executable).parent}:$PATH\n" in script
    venv = pass_executor(tmp_path, {"partition": "debug", "venv_path": "/opt/env/bin/activate"})
    assert "source /opt/env/bin/activate" in venv.get_launch_file_contents({}, "x") and venv.env_command is None


@pytest.mark.parametrize(
    ("key", "nearest"),
    [
        ("acount", "account"),
        ("partiton", "partition"),
        ("cpu_per_task", "cpus_per_task"),
        ("mem_per_cpu_g", "mem_per_cpu_gb"),
        ("reservaton", "reservation"),
        ("constraints", "constraint"),
    ],
)
def test_an_unknown_slurm_setting_is_one_line_naming_the_nearest(key, nearest):
    with pytest.raises(DistillError) as err:
        ExecutorSpec("slurm", slurm={"partition": "debug", key: "x"})
    message = str(err.value)
    assert message.startswith(f"data.slurm.{key} is neither a keyword of datatrove's SlurmPipelineExecutor")
    assert f"did you mean data.slurm.{nearest}?" in message and "\n" not in message


@pytest.mark.parametrize(
    ("key", "instead"),
    [
        ("tasks", "data.filter_tasks"),
        ("mem", "data.slurm.mem_per_cpu_gb"),
        ("mem-per-cpu", "data.slurm.mem_per_cpu_gb"),
        ("nodes", "data.slurm.nodes_per_task"),
        ("output", "data.slurm.slurm_logs_folder"),
        ("array", None),
        ("job_name", None),
        ("dependency", None),
        ("logging_dir", None),
    ],
)
def test_settings_the_runner_owns_are_refused(key, instead):
    with pytest.raises(DistillError, match=f"data.slurm.{key} is set by the filter runner") as err:
        ExecutorSpec("slurm", slurm={"partition": "debug", key: "x"})
    assert (f"set {instead} instead" in str(err.value)) == (instead is not None)


def test_unknown_slurm_settings_are_ignored_by_the_local_executor():
    assert ExecutorSpec("local", slurm={"acount": "x"}).slurm_kwargs == {}


def test_the_settings_follow_the_installed_datatrove(monkeypatch):
    """Keywords are read from the executor's signature: a new one needs no change here, and every one the
    runner owns must still exist (a rename in datatrove fails this test, not a user's cluster run)."""
    from datatrove.executor import SlurmPipelineExecutor

    params = inspect.signature(SlurmPipelineExecutor.__init__).parameters
    assert set(slurm_executor.RUNNER_KEYWORDS) <= set(params)
    assert set(slurm_executor.SLURM_DEFAULTS) <= set(params)
    assert inspect.signature(SlurmPipelineExecutor).bind(
        pipeline=[],
        logging_dir="logs",
        job_name="pass0",
        tasks=2,
        **slurm_executor.slurm_executor_kwargs({"partition": "p"}),
    )

    class Upgraded(slurm_executor.FilterPassExecutor):
        def __init__(self, pipeline, tasks, time, partition, *, new_knob: int = 0, **kwargs):
            super().__init__(pipeline, tasks, time, partition, **kwargs)

    monkeypatch.setattr(slurm_executor, "FilterPassExecutor", Upgraded)
    kwargs = slurm_executor.slurm_executor_kwargs({"partition": "p", "new_knob": 3, "account": "a"})
    assert (kwargs["new_knob"], kwargs["partition"], kwargs["sbatch_args"]) == (3, "p", {"account": "a"})


@pytest.fixture
def in_process_slurm(tmp_path, monkeypatch) -> list[str]:
    """datatrove's real SLURM executor with sbatch replaced: the submitted script's array tasks run here,
    one after another, as ``launch_pickled_pipeline`` runs them on a node. Returns the submitted scripts."""
    import dill
    from datatrove.executor import slurm

    bin_dir = tmp_path / "bin"  # the runner first checks that this is a submit host
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    scripts: list[str] = []

    def sbatch(script: str, job_id_retriever, *args) -> str:
        scripts.append(script)
        last = int(re.search(r"^#SBATCH --array=0-(\d+)", script, re.MULTILINE).group(1))
        pickled = re.search(r"launch_pickled_pipeline (\S+)", script).group(1)
        for task in range(last + 1):
            monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(task))
            with open(pickled, "rb") as f:
                dill.load(f).run()
        monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
        return str(len(scripts))

    monkeypatch.setattr(slurm, "launch_slurm_job", sbatch)
    monkeypatch.setattr(slurm, "expand_slurm_nodelist", lambda nodelist: ["localhost"])
    monkeypatch.setenv("SLURM_NODELIST", "localhost")
    monkeypatch.setattr(slurm_executor, "slurm_job_queued", lambda job_id: False)  # each job has ended when submitted
    return scripts


def test_slurm_executor_gets_every_pass_and_waits_for_its_shards(tmp_path, in_process_slurm):
    """data.executor=slurm: each pass is one array job over the shards, submitted with the configured
    settings; the result equals a local run's (tests/slurm/test_filter_slurm.py: on a real cluster)."""
    spec = ExecutorSpec(
        "slurm", tasks=2, slurm={"partition": "cpu", "time": "00:10:00", "account": "research"}, poll_s=0
    )
    result = run(tmp_path / "slurm", executor=spec)
    local = run(tmp_path / "local")
    assert {d.id: d.text for d in result.documents()} == KEPT
    assert result.stats["stages"] == local.stats["stages"] and result.stats["executor"] == "slurm"
    # the code filter's pass (dedup prepares on what it keeps), dedup's hashing pass, dedup's filter pass;
    # no stats-merging job (the runner sums the shards' stats itself)
    names = [re.search(r"^#SBATCH --job-name=(\S+)$", s, re.MULTILINE).group(1) for s in in_process_slurm]
    assert names == [
        "distill-filter-pass0",
        "distill-filter-exact_dedup.exact_dedup_hash_normalized",
        "distill-filter-pass1",
    ]
    for script in in_process_slurm:
        for line in ("--partition=cpu", "--time=00:10:00", "--account=research", "--array=0-1"):
            assert f"#SBATCH {line}\n" in script


def test_a_slurm_job_that_ends_with_shards_unfinished_is_an_error_not_a_hang(tmp_path, in_process_slurm, monkeypatch):
    from datatrove.executor import slurm

    cancelled = []
    monkeypatch.setattr(slurm, "launch_slurm_job", lambda *args: "41")  # queued, then gone without running
    monkeypatch.setattr(slurm_executor.subprocess, "run", lambda cmd, **kw: cancelled.append(cmd))
    spec = ExecutorSpec("slurm", tasks=2, slurm={"partition": "cpu"}, poll_s=0)
    with pytest.raises(DistillError, match=r"filter pass pass0: SLURM job 41 ended with 2 of 2 shards unfinished"):
        run(tmp_path, executor=spec)
    assert cancelled == [["scancel", "41"]]


def test_sbatch_refusing_a_pass_is_a_user_error(tmp_path, in_process_slurm, monkeypatch):
    from datatrove.executor import slurm

    def refuse(*args):
        raise subprocess.CalledProcessError(1, "sbatch")

    monkeypatch.setattr(slurm, "launch_slurm_job", refuse)
    with pytest.raises(DistillError, match="sbatch refused filter pass pass0 .*launch_script.slurm"):
        run(tmp_path, executor=ExecutorSpec("slurm", tasks=2, slurm={"partition": "nope"}))


def test_slurm_needs_a_submit_host(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DistillError, match="data.executor=slurm: sbatch is not on PATH"):
        run(tmp_path, executor=ExecutorSpec("slurm", tasks=2, slurm={"partition": "debug"}))
