"""A student with its own tokenizer, end to end: live teacher and a teacher cache written without it,
the tokenizer-free metrics, the exported student's own tokenizer, and the one-line refusal before
training (the other refusals: tests/run/test_cross.py)."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig, AutoTokenizer

from tests.conftest import run_cli

pytestmark = pytest.mark.cli

SMOKE = ["experiment=smoke", "student=scratch", "student.hidden_size=64", "student.num_layers=2", "student.num_heads=2"]
OWN = ["student.vocab_size=700"]  # its own byte-level BPE, trained on the training split (the teacher's: 512)


def one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return proc.stderr.strip().splitlines()[-1].removeprefix("distill-train: error: ")


def test_gold_run_measures_every_model_per_byte_and_exports_the_students_tokenizer(cache_dir, tmp_path):
    out = tmp_path / "run"
    proc = run_cli([*SMOKE, *OWN, "loss=gold", f"hydra.run.dir={out}"], cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    for model in ("teacher", "student", "baseline"):
        assert 0 < metrics[f"{model}.bits_per_byte"] < 8 and metrics[f"{model}.val_ppl"] > 1
    assert 0 <= metrics["student.top1_agreement"] <= 1  # on aligned one-token spans of one string
    assert metrics["gap_closed.on"] == "bits_per_byte" and "kl_to_teacher" not in json.dumps(metrics)
    assert metrics["student.val_ppl"] < metrics["student.val_ppl_start"]
    alignment = json.loads((out / "data_stats.json").read_text())["alignment"]
    assert alignment["val"]["spans"] > 0.8 * alignment["val"]["student_tokens"]
    student = AutoTokenizer.from_pretrained(out / "student")
    teacher = AutoTokenizer.from_pretrained(metrics["teacher.path"])
    assert len(student) == 700 and len(teacher) == 512
    assert AutoConfig.from_pretrained(out / "student").vocab_size == 700
    assert "bits/byte" in (out / "report.md").read_text()


def test_the_cross_tokenizer_preset_trains_with_its_three_parts(cache_dir, tmp_path):
    """loss=cross_tokenizer on a Llama 3-style student: the prefix KL, the KL inside the class and the CE on
    the rows no span starts at are each logged, and the run trains."""
    import csv

    out = tmp_path / "run"
    own = [*OWN, "student.tokenizer_style=llama3", "loss=cross_tokenizer", "control=false"]
    proc = run_cli([*SMOKE, *own, f"hydra.run.dir={out}"], cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "0.5 × ce + 1.4 × prefix_kl" in proc.stderr + proc.stdout
    rows = list(csv.DictReader((out / "csv" / "metrics.csv").open()))
    logged = lambda key: [float(r[key]) for r in rows if r.get(key)]
    for key in ("train/prefix_kl", "train/prefix_kl.within", "train/prefix_kl.uncovered_ce"):
        assert logged(key) and all(v > 0 for v in logged(key)), key
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["student.val_ppl"] < metrics["student.val_ppl_start"]


@pytest.mark.slow
def test_a_teacher_cache_written_without_the_student_serves_its_own_tokenizer(cache_dir, tmp_path):
    where = tmp_path / "teacher-cache"
    proc = run_cli(
        [*SMOKE, f"teacher.cache_dir={where}", f"hydra.run.dir={tmp_path / 'c'}"], cache_dir, "distill-cache"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "run"
    # another family's tokenizer, and two cross-vocabulary terms composed (the projection reads the cache too)
    own = [*OWN, "student.tokenizer_style=sentencepiece", "loss=uld", "+loss.weights.projected_kl=0.5"]
    args = [*SMOKE, *own, "teacher=cache", f"teacher.cache_dir={where}", "control=false"]
    proc = run_cli([*args, f"hydra.run.dir={out}"], cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert AutoTokenizer.from_pretrained(out / "student").eos_token == "</s>"
    assert "0.5 × projected_kl" in proc.stderr + proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["teacher.source"] == "cache" and metrics["student.val_ppl"] < metrics["student.val_ppl_start"]
    # written for a student of the teacher's tokenizer; the teacher's bits per byte come from the manifest
    extra = json.loads((where / "manifest.json").read_text())["extra"]
    assert extra["tokenizers"]["student"] == "the teacher's"
    assert metrics["teacher.bits_per_byte"] == extra["teacher.bits_per_byte"] > 0


def test_a_same_vocabulary_term_with_its_own_tokenizer_is_refused_before_training(cache_dir, tmp_path):
    proc = run_cli([*SMOKE, *OWN, f"hydra.run.dir={tmp_path}"], cache_dir)  # loss: forward KL (the default)
    error = one_line_error(proc)
    assert "'forward_kl'" in error and "loss=gold, loss=prefix_kl, loss=projected_kl or loss=uld" in error
    # the student never trains (a teacher from scratch may, when no earlier test on this worker cached it)
    assert "student (distilled)" not in proc.stdout + proc.stderr and not (tmp_path / "metrics.json").exists()
