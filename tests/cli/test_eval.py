"""distill-eval as a user runs it, on the smoke run's student and its cached teacher."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import run_cli
from tests.student.tiny_models import tiny_model_dir

pytestmark = pytest.mark.cli
FAST = ["speed.batches=1", "speed.rounds=1", "speed.new_tokens=2", "generation.max_new_tokens=2"]


def quick_eval(models: str, cache_dir, out) -> dict:
    """distill-eval on the smoke data at its fastest settings; its eval.json."""
    args = ["experiment=smoke", f"hydra.run.dir={out}", models, "data.max_val_blocks=2", *FAST]
    proc = run_cli(args, cache_dir, prog="distill-eval")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "eval.json").read_text())


@pytest.mark.slow
def test_eval_compares_teacher_and_student_on_the_training_split(smoke_run, cache_dir, tmp_path):
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    teacher = metrics["teacher.path"]  # the cached smoke teacher
    proc = run_cli(
        [
            "experiment=smoke",
            f"hydra.run.dir={tmp_path}",
            f"models={{teacher: {teacher}, student: {smoke_run / 'student'}}}",
            "speed.batches=1",
            "speed.rounds=1",
            "speed.new_tokens=4",
            "generation.max_new_tokens=8",
        ],
        cache_dir,
        prog="distill-eval",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["reference"] == "teacher" and list(result["models"]) == ["teacher", "student"]
    student = result["models"]["student"]
    # the same validation split and tokenization as the training run: the same numbers
    assert math.isclose(student["val_ppl"], metrics["student.val_ppl"], rel_tol=1e-3)
    assert math.isclose(result["models"]["teacher"]["val_ppl"], metrics["teacher.val_ppl"], rel_tol=1e-3)
    assert math.isclose(student["top1_agreement"], metrics["student.top1_agreement"], abs_tol=0.01)
    assert student["kl_to_teacher"] > 0
    assert student["params"] == metrics["student.params"] and student["params_x"] > 1
    assert student["size_bytes"] == metrics["student.size_bytes"]
    for key in ("scoring_tokens_per_s", "gen_tokens_per_s", "ms_per_token", "ttft_ms"):
        assert student[key] > 0, key
    assert len(result["samples"]["student"]) == 3
    table = (tmp_path / "eval.md").read_text()
    assert "| student |" in table and "| teacher |" in table and table.splitlines()[0] in proc.stdout


def test_eval_compares_models_with_different_tokenizers_by_bits_per_byte(cache_dir, tmp_path):
    a, b = tiny_model_dir(tmp_path / "a", 300), tiny_model_dir(tmp_path / "b", 280)
    out = tmp_path / "out"
    rows = quick_eval(f"models=[{a},{b}]", cache_dir, out)["models"]
    assert math.isfinite(rows["a"]["val_ppl"]) and "val_ppl" not in rows["b"]
    assert all(math.isfinite(row["bits_per_byte"]) and math.isfinite(row["bits_per_char"]) for row in rows.values())
    assert 0 <= rows["b"]["aligned_top1_agreement"] <= 1 and rows["b"]["aligned_positions"] > 0
    assert "b: a tokenizer other than a's" in (out / "eval.md").read_text()


def test_eval_names_a_missing_model(cache_dir, tmp_path):
    proc = run_cli(
        ["experiment=smoke", f"hydra.run.dir={tmp_path}", f"models=[{tmp_path / 'nope'}]"],
        cache_dir,
        prog="distill-eval",
    )
    assert proc.returncode == 2 and "models.nope does not exist" in proc.stderr


@pytest.mark.slow
def test_lm_eval_harness_scores_the_exported_student_on_local_tasks(smoke_run, cache_dir, tmp_path):
    pytest.importorskip("lm_eval")
    proc = run_cli(
        [
            "experiment=smoke",
            f"hydra.run.dir={tmp_path}",
            f"models=[{smoke_run / 'student'}]",
            "lm_eval.run=true",
            "lm_eval.max_docs=2",
            "lm_eval.max_items=8",
            "speed.batches=1",
            "speed.rounds=1",
            "speed.new_tokens=2",
            "generation.max_new_tokens=2",
        ],
        cache_dir,
        prog="distill-eval",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((tmp_path / "eval.json").read_text())["models"]["student"]
    assert row["lm_eval.distill_ppl.bits_per_byte"] > 0
    assert 0 <= row["lm_eval.distill_next_line.acc"] <= 1
    assert "lm_eval --model hf" in (tmp_path / "eval.md").read_text()


def test_every_run_reports_its_compression(smoke_run):
    m = json.loads((smoke_run / "metrics.json").read_text())
    assert m["compression.params_x"] == m["teacher.params"] / m["student.params"] > 1
    assert m["compression.size_x"] == m["teacher.size_bytes"] / m["student.size_bytes"] > 1
    assert m["compression.speed_x"] == m["student.scoring_tokens_per_s"] / m["teacher.scoring_tokens_per_s"]
    assert m["compression.ppl_delta"] == m["student.val_ppl"] - m["teacher.val_ppl"]
    assert m["teacher.forward_tokens"] == m["train.tokens"]  # live teacher: one forward per training token
    assert m["teacher.forward_flops"] == 2 * m["teacher.params"] * m["train.tokens"]
    assert m["run.wall_s"] > m["train.wall_s"] > 0
    assert m["student.kl_to_teacher"] > 0
    report = (smoke_run / "report.md").read_text()
    assert "## Compression" in report and "FLOPs" in report and "| parameters |" in report


@pytest.mark.deploy
def test_eval_runs_each_exported_gguf_in_llama_cpp(cache_dir, tmp_path):
    pytest.importorskip("llama_cpp", reason="llama.cpp not installed: pip install 'distill[deploy]'")
    from distill.export.command import export_dir

    student = tiny_model_dir(tmp_path / "run" / "student", 300)
    export_dir(student.parent, "f16")  # <run>/student.f16.gguf, found beside the model (llama_cpp.files=auto)
    out = tmp_path / "out"
    result = quick_eval(f"models={{s: {student}}}", cache_dir, out)
    row = result["llama_cpp"]["s.f16"]
    assert row["model"] == "s" and row["size_bytes"] == (student.parent / "student.f16.gguf").stat().st_size
    assert math.isclose(row["val_ppl"], result["models"]["s"]["val_ppl"], rel_tol=5e-3)  # F16: within 0.5%
    assert row["gen_tokens_per_s"] > 0 and row["ttft_ms"] > 0
    assert "| s.f16 | s |" in (out / "eval.md").read_text()
