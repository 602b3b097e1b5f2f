"""trainer=ddp and trainer=fsdp with 2 CPU processes (gloo), end to end through distill-train:
both ranks end with identical weights, one run dir holds one metrics.json and one export (rank 0),
FSDP2 resumes from its distributed checkpoint, and trainer=deepspeed fails in one line here."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.cli]

TWO_CPU = [
    "experiment=smoke",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "control=false",
    "logger=none",
    "+callbacks.replica_check._target_=distill.strategies.ReplicaCheck",
]


def run_ok(args, cache):
    proc = run_cli(args, cache)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, cache_dir):
    # a run dir with a microsecond timestamp: rank 1, launched later, must still land in rank 0's
    root = tmp_path_factory.mktemp("ddp")
    run_ok(["trainer=ddp", *TWO_CPU, f"hydra.run.dir={root}/run_${{now:%H-%M-%S-%f}}"], cache_dir)
    runs = list(root.iterdir())
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("fsdp")
    run_ok(["trainer=fsdp", "trainer.strategy.shard_teacher=true", *TWO_CPU, f"hydra.run.dir={out}"], cache_dir)
    return out


def assert_one_run_written_by_rank_zero(out):
    replicas = json.loads((out / "replicas.json").read_text())
    assert len(replicas["hashes"]) == 2 and replicas["identical"], replicas
    assert [p.relative_to(out) for p in out.rglob("metrics.json")] == [
        p.relative_to(out) for p in [out / "metrics.json"]
    ]
    assert sorted(p.parent.name for p in out.rglob("config.json")) == ["student"]  # one export
    assert (out / "train_ddp_process_1.log").exists()  # rank 1 ran in this same dir
    assert not list(out.rglob("*.partial*"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train.tokens"] == 20 * 4 * 64 * 2  # steps x batch x seq_len x ranks
    return metrics


def test_ddp_two_processes_end_identical_and_write_once(ddp_run):
    metrics = assert_one_run_written_by_rank_zero(ddp_run)
    student = AutoModelForCausalLM.from_pretrained(ddp_run / "student")
    assert student.num_parameters() == metrics["student.params"]


def test_fsdp_two_processes_export_full_weights(fsdp_run):
    metrics = assert_one_run_written_by_rank_zero(fsdp_run)
    student = AutoModelForCausalLM.from_pretrained(fsdp_run / "student")
    assert student.num_parameters() == metrics["student.params"]
    assert student.get_input_embeddings().weight.shape[0] == 512  # the whole vocabulary, not one rank's shard
    last = fsdp_run / "checkpoints" / "last.ckpt"
    assert last.is_dir() and len(list(last.glob("*.distcp"))) == 2  # a distributed checkpoint: one shard per rank
    assert (fsdp_run / "checkpoints" / "step20.ckpt").is_dir()


def test_fsdp_trains_the_same_student_as_ddp(ddp_run, fsdp_run):
    """Same data, same global batch, averaged gradients: sharding (student and teacher) changes
    where the numbers live, not what they are."""
    ddp = AutoModelForCausalLM.from_pretrained(ddp_run / "student").state_dict()
    fsdp = AutoModelForCausalLM.from_pretrained(fsdp_run / "student").state_dict()
    assert ddp.keys() == fsdp.keys()
    for name in ddp:
        torch.testing.assert_close(fsdp[name], ddp[name], rtol=1e-3, atol=1e-4, msg=name)


def test_fsdp_resumes_from_its_distributed_checkpoint(fsdp_run, tmp_path, cache_dir):
    shutil.copytree(fsdp_run / "checkpoints", tmp_path / "checkpoints")
    proc = run_ok(
        [
            "trainer=fsdp",
            "trainer.strategy.shard_teacher=true",
            *TWO_CPU,
            f"hydra.run.dir={tmp_path}",
            "ckpt_path=last",
            "trainer.max_steps=30",
        ],
        cache_dir,
    )
    assert "Restored all states from the checkpoint" in proc.stdout + proc.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["train.steps"] == 30
    assert (tmp_path / "checkpoints" / "step30.ckpt").is_dir()
    assert json.loads((tmp_path / "replicas.json").read_text())["identical"]


def test_deepspeed_preset_fails_in_one_line_here(tmp_path, cache_dir):
    proc = run_cli(["experiment=smoke", "trainer=deepspeed", f"hydra.run.dir={tmp_path}"], cache_dir)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("distill-train: error: trainer=deepspeed") and (
        "'deepspeed' package" in line or "CUDA" in line
    )
    assert not (tmp_path / "metrics.json").exists()


def test_ddp_in_a_local_multirun_runs_each_job_once(tmp_path, cache_dir):
    """Lightning re-runs the command line for rank 1; under -m that must be this job, not the sweep."""
    proc = run_ok(
        ["-m", "trainer=ddp", *TWO_CPU, "trainer.max_steps=10", "optim.lr=1e-3,2e-3", f"hydra.sweep.dir={tmp_path}"],
        cache_dir,
    )
    assert (proc.stdout + proc.stderr).count("Launching 2 jobs") == 1
    hashes = []
    for job in ("0", "1"):
        replicas = json.loads((tmp_path / job / "replicas.json").read_text())
        assert replicas["identical"] and len(replicas["hashes"]) == 2
        assert (tmp_path / job / "metrics.json").exists() and (tmp_path / job / "train_ddp_process_1.log").exists()
        hashes.append(replicas["hashes"][0])
    assert hashes[0] != hashes[1]  # two learning rates, two students


def test_fsdp_shards_each_of_several_teachers(tmp_path, cache_dir):
    out = tmp_path / "run"
    teachers = "teachers=[{weight: 3}, {scratch: {num_layers: 3}, weight: 1, name: deep}]"
    args = ["trainer=fsdp", "trainer.strategy.shard_teacher=true", teachers, "teachers_mix=sum", *TWO_CPU]
    proc = run_ok([*args, f"hydra.run.dir={out}"], cache_dir)
    assert "2 teacher(s) sharded over 2 ranks" in proc.stderr + proc.stdout
    metrics = assert_one_run_written_by_rank_zero(out)
    # measured after training from the gathered (unsharded) weights of each
    assert metrics["teachers.1.params"] > metrics["teachers.0.params"] > 0 and metrics["teachers.1.val_ppl"] > 1
