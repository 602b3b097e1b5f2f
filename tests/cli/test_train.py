"""distill-train end to end at smoke sizes, as a user runs it."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import run_cli
from tests.run_outputs import assert_terms_active, read_metrics

pytestmark = pytest.mark.cli

DESIGN_KEYS = {
    "teacher.params",
    "teacher.val_ppl",
    "student.params",
    "student.val_ppl",
    "student.top1_agreement",
    "train.tokens",
    "train.tokens_per_s",
    "train.wall_s",
    "baseline.val_ppl",
}


def test_smoke_writes_every_output(smoke_run):
    for name in ("metrics.json", "report.md", "report.png", "student", "checkpoints", ".hydra"):
        assert (smoke_run / name).exists(), name
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    assert DESIGN_KEYS <= set(metrics)
    assert metrics["student.params"] < metrics["teacher.params"]
    assert 0 <= metrics["student.top1_agreement"] <= 1
    assert metrics["train.tokens"] == 20 * 4 * 64  # smoke: 20 steps of 4 x 64 tokens
    assert metrics["train.tokens_per_s"] > 0 and metrics["train.wall_s"] > 0
    report = (smoke_run / "report.md").read_text()
    assert "| student (distilled) |" in report and "gap closed" in report
    assert (smoke_run / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_distillation_improves_the_student_and_beats_the_control(smoke_run):
    """What a user checks: the student learned from the teacher. An untrained student, or one no better than
    the from-scratch control, fails this."""
    metrics = read_metrics(smoke_run)
    # better than itself as built (pruned from the teacher), on held-out data and in distance to the teacher
    assert metrics["student.val_ppl"] < metrics["student.val_ppl_start"], metrics
    assert metrics["student.kl_to_teacher"] < metrics["student.kl_to_teacher_start"], metrics
    # better than the control: the same architecture trained from scratch on CE for the same steps
    assert metrics["student.val_ppl"] < metrics["baseline.val_ppl"], metrics
    assert metrics["student.kl_to_teacher"] < metrics["baseline.kl_to_teacher"], metrics
    assert metrics["student.top1_agreement"] > metrics["baseline.top1_agreement"], metrics


def test_student_export_loads_and_generates(smoke_run):
    model = AutoModelForCausalLM.from_pretrained(smoke_run / "student")
    tok = AutoTokenizer.from_pretrained(smoke_run / "student")
    ids = tok("def main(", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.eos_token_id)
    assert out.shape[1] > ids.shape[1]
    assert isinstance(tok.decode(out[0]), str) and tok.decode(out[0]).startswith("def main(")


def test_checkpoints_hold_the_student_only(smoke_run):
    ckpt = torch.load(smoke_run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    keys = list(ckpt["state_dict"])
    assert keys and all(k.startswith("student.") for k in keys)
    assert ckpt["global_step"] == 20


def test_loss_terms_are_logged_separately(smoke_run):
    header = (smoke_run / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "train/forward_kl", "train/ce", "tokens_per_s"} <= set(header)
    assert_terms_active(smoke_run, "loss", "forward_kl", "ce")  # the smoke objective: forward KL + CE


def test_resume_from_last_checkpoint(smoke_run, cache_dir, tmp_path):
    """ckpt_path=last continues the run: only the remaining steps are trained, and the totals cover both."""
    out = tmp_path / "resumed"
    first = run_cli(["experiment=smoke", f"hydra.run.dir={out}", "trainer.max_steps=10", "control=false"], cache_dir)
    assert first.returncode == 0, first.stderr[-2000:]
    second = run_cli(
        ["experiment=smoke", f"hydra.run.dir={out}", "trainer.max_steps=20", "control=false", "ckpt_path=last"],
        cache_dir,
    )
    assert second.returncode == 0, second.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train.tokens"] == 20 * 4 * 64  # tokens of the first attempt come from the checkpoint
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == 20
    assert "baseline.val_ppl" not in metrics


def test_second_run_reuses_the_cached_teacher(smoke_run, cache_dir, tmp_path):
    teachers = list((cache_dir / "teachers").iterdir())
    proc = run_cli(["experiment=smoke", f"hydra.run.dir={tmp_path}", "control=false"], cache_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "training the teacher from scratch" not in proc.stdout + proc.stderr
    assert list((cache_dir / "teachers").iterdir()) == teachers


def test_other_loggers(cache_dir, tmp_path):
    proc = run_cli(
        ["experiment=smoke", f"hydra.run.dir={tmp_path}", "logger=tensorboard", "control=false", "trainer.max_steps=3"],
        cache_dir,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
