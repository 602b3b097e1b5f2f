"""``distill-filter ... data.executor=slurm`` on a real Slurm cluster (``slurm/local-cluster.sh``): every filter
pass is an array job that datatrove's SlurmPipelineExecutor submits, with an account (an sbatch option the
executor has no keyword for), and the result equals the local executor's on the same data; a later run uses
it from the cache. Skipped where Slurm is not installed, unless ``DISTILL_REQUIRE_SLURM=1``.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli

# the smoke corpus's 36 training files; code rules and exact duplicates: three passes, one of them the
# dedup stage's own global pass (MinHash would add three more jobs and nothing this test checks)
FILTERS = ["experiment=smoke", "data/filters=[code,dedup]", "~data.filters.minhash", "data.filter_tasks=2"]
# the local cluster's partition; one CPU per shard, so both shards of a pass run side by side
ON_SLURM = [
    "data.executor=slurm",
    "data.slurm.partition=debug",
    "data.slurm.cpus_per_task=1",
    "data.slurm.mem_per_cpu_gb=1",
]
PASSES = {"distill-filter-pass0", "distill-filter-exact_dedup.exact_dedup_hash_normalized", "distill-filter-pass1"}


def filter_cli(args: list[str], cache: Path, run_dir: Path) -> subprocess.CompletedProcess:
    return run_cli([*FILTERS, *args, f"hydra.run.dir={run_dir}"], cache, prog="distill-filter")


def last_line(proc: subprocess.CompletedProcess) -> str:
    return [line for line in proc.stderr.splitlines() if line.strip()][-1]


def filtered_docs(cache: Path) -> dict[str, str]:
    """The published result in a cache: the documents a training run on these filters reads."""
    (result,) = [p for p in (cache / "filtered").iterdir() if (p / "filter_stats.json").is_file()]
    return {
        row["id"]: row["text"]
        for path in sorted((result / "docs").glob("*.jsonl.gz"))
        for row in map(json.loads, gzip.open(path, "rt", encoding="utf-8"))
    }


def jobs_of_account(account: str) -> list[tuple[str, str]]:
    """(job name, state) of every array task charged to ``account``; finished jobs stay listed for 10 minutes."""
    out = subprocess.run(
        ["squeue", "--noheader", "--states=all", f"--account={account}", "--format=%j %T"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [tuple(line.split()) for line in out.splitlines()]


@pytest.mark.slow
@pytest.mark.slurm
def test_distill_filter_on_slurm_matches_the_local_executor(slurm_cluster, tmp_path):
    account = f"research-{os.getpid()}"  # this run's jobs among any others the cluster still lists
    on_slurm = filter_cli(
        [*ON_SLURM, f"+data.slurm.account={account}"], tmp_path / "slurm-cache", tmp_path / "slurm-run"
    )
    assert on_slurm.returncode == 0, on_slurm.stderr[-3000:]
    local = filter_cli([], tmp_path / "local-cache", tmp_path / "local-run")
    assert local.returncode == 0, local.stderr[-3000:]

    got = json.loads((tmp_path / "slurm-run" / "filter_stats.json").read_text())
    want = json.loads((tmp_path / "local-run" / "filter_stats.json").read_text())
    assert (got["executor"], want["executor"]) == ("slurm", "local")
    assert got["input"] == 36 and 0 < got["kept"] < got["input"]  # the smoke corpus has a duplicate and bad files
    assert {k: v for k, v in got.items() if k != "executor"} == {k: v for k, v in want.items() if k != "executor"}
    assert filtered_docs(tmp_path / "slurm-cache") == filtered_docs(tmp_path / "local-cache")

    # every pass went through sbatch with the account (two array tasks each), and no stats-merging job
    jobs = jobs_of_account(account)
    assert sorted(jobs) == sorted((name, "COMPLETED") for name in PASSES for _ in range(2)), jobs

    # the result is usable: the next run with these data and filters (any executor) takes it from the cache
    again = filter_cli([], tmp_path / "slurm-cache", tmp_path / "again")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "filtered data: cached" in again.stdout + again.stderr
    assert json.loads((tmp_path / "again" / "filter_stats.json").read_text()) == got


@pytest.mark.slow
@pytest.mark.slurm
def test_a_partition_sbatch_refuses_is_a_one_line_error(slurm_cluster, tmp_path):
    proc = filter_cli(
        ["data.executor=slurm", "data.slurm.partition=no-such-partition"], tmp_path / "cache", tmp_path / "run"
    )
    assert proc.returncode != 0
    assert last_line(proc).startswith("distill-filter: error: sbatch refused filter pass pass0"), proc.stderr[-3000:]
    assert "invalid partition" in proc.stderr.lower() and "Traceback" not in proc.stderr


@pytest.mark.cli
def test_an_unknown_slurm_setting_stops_distill_filter_before_any_work(tmp_path):
    """No cluster needed: the settings are checked when the data module is built."""
    proc = filter_cli(
        ["data.executor=slurm", "data.slurm.partition=debug", "+data.slurm.acount=research"],
        tmp_path / "cache",
        tmp_path / "run",
    )
    assert proc.returncode != 0
    assert last_line(proc) == (
        "distill-filter: error: data.slurm.acount is neither a keyword of datatrove's SlurmPipelineExecutor nor an "
        "sbatch option (did you mean data.slurm.account?); other sbatch options go under data.slurm.sbatch_args"
    )
    assert "Traceback" not in proc.stderr and not (tmp_path / "cache" / "filtered").exists()
