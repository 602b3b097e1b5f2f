"""Black-box distillation (prompt/response data, no teacher model) and sequence-level KD via the CLI."""

import json

import pytest

from tests.cli.helpers import qa_file
from tests.conftest import run_cli

pytestmark = pytest.mark.cli


def test_black_box_trains_on_responses_without_a_teacher(cache_dir, tmp_path):
    data = qa_file(tmp_path / "api_dump.jsonl")
    out = tmp_path / "run"
    proc = run_cli(
        [
            "experiment=smoke",
            "teacher=none",
            "student=scratch",
            "student.num_layers=1",
            "student.hidden_size=32",
            "student.num_heads=2",
            "data=prompt_response",
            f"data.paths=[{data}]",
            "data.prompt_field=question",
            "data.response_field=answer",
            "data.seq_len=32",
            f"hydra.run.dir={out}",
        ],
        cache_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = proc.stdout + proc.stderr
    assert "teacher: none" in logs and "training the teacher" not in logs
    metrics = json.loads((out / "metrics.json").read_text())
    assert "teacher.val_ppl" not in metrics and "baseline.val_ppl" not in metrics
    assert metrics["student.val_ppl"] > 1 and (out / "student" / "config.json").exists()
    header = (out / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "train/ce" in header and "train/forward_kl" not in header


def test_pruned_student_needs_a_teacher(cache_dir, tmp_path):
    proc = run_cli(["experiment=smoke", "teacher=none", f"hydra.run.dir={tmp_path}"], cache_dir)
    assert proc.returncode != 0 and "student=scratch" in proc.stderr.strip().splitlines()[-1]


def test_sequence_level_kd_generates_once_then_reuses(cache_dir, tmp_path):
    args = [
        "experiment=smoke",
        "control=false",
        "trainer.max_steps=4",
        "trainer.val_check_interval=4",
        "seq_kd.enabled=true",
        "seq_kd.prompt_tokens=16",
        "seq_kd.new_tokens=16",
        "seq_kd.max_examples=16",
    ]
    first = run_cli([*args, f"hydra.run.dir={tmp_path / 'a'}"], cache_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli([*args, f"hydra.run.dir={tmp_path / 'b'}"], cache_dir)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "seqkd: generating" in first.stdout + first.stderr
    assert "seqkd: generating" not in second.stdout + second.stderr  # cached
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["train.tokens"] == 4 * 4 * 64
