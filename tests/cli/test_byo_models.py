"""Bring your own teacher and data: tiny random HF models of several architectures, distilled from the CLI.

Each teacher has its own BPE tokenizer and an embedding padded past ``len(tokenizer)`` to a multiple
of 64 (as real checkpoints do), so the framework must trim the padding rows.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

from tests.cli.helpers import MAX_STEPS, byo_args, save_random_model
from tests.conftest import run_cli

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
}
SMOKE_BATCH, SMOKE_SEQ = 4, 64  # experiment=smoke's data sizes


def _error_lines(proc) -> list[str]:
    return [ln for ln in proc.stderr.splitlines() if ln.startswith("distill-train: error:")]


def _last_line(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


@pytest.mark.parametrize("arch, layers", [("llama", 4), ("qwen2", 4), ("gpt2", 2)])
def test_distill_your_own_teacher(arch, layers, byo, cache_dir, tmp_path):
    teacher_dir = save_random_model(tmp_path / f"teacher-{arch}", arch, byo["tok_a"])
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    assert teacher.config.num_hidden_layers == layers
    assert teacher.get_output_embeddings().weight.shape[0] > len(tok)  # padding rows to trim

    out = tmp_path / "run"
    proc = run_cli(byo_args(teacher_dir, byo["data"], out), cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training the teacher from scratch" not in proc.stdout + proc.stderr

    metrics = json.loads((out / "metrics.json").read_text())
    assert DESIGN_KEYS <= set(metrics)
    assert "baseline.val_ppl" not in metrics  # control=false
    assert metrics["teacher.params"] == sum(p.numel() for p in teacher.parameters())
    assert metrics["student.params"] < metrics["teacher.params"]
    assert metrics["train.tokens"] == MAX_STEPS * SMOKE_BATCH * SMOKE_SEQ
    # perplexities over the tokenizer's vocabulary only: a random model is near uniform, far below the padded size
    for name in ("teacher", "student"):
        assert 1 < metrics[f"{name}.val_ppl"] < 2 * len(tok), metrics
    assert 0 <= metrics["student.top1_agreement"] <= 1

    student = AutoModelForCausalLM.from_pretrained(out / "student")
    student_tok = AutoTokenizer.from_pretrained(out / "student")
    assert type(student) is type(teacher)
    assert student.config.num_hidden_layers == layers // 2
    assert student.get_output_embeddings().weight.shape[0] >= len(student_tok)
    assert student_tok.get_vocab() == tok.get_vocab()
    ids = student_tok("def main(", return_tensors="pt").input_ids
    generated = student.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=student_tok.eos_token_id)
    assert generated.shape[0] == 1 and generated.shape[1] > ids.shape[1]
    assert torch.equal(generated[0, : ids.shape[1]], ids[0])


def test_teacher_vocab_smaller_than_tokenizer(byo, cache_dir, tmp_path):
    n = len(AutoTokenizer.from_pretrained(byo["tok_a"]))
    teacher_dir = save_random_model(tmp_path / "small-vocab", "llama", byo["tok_a"], vocab_size=n - 10)
    out = tmp_path / "run"
    proc = run_cli(byo_args(teacher_dir, byo["data"], out), cache_dir)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = _error_lines(proc)
    assert len(errors) == 1 and errors[0] == _last_line(proc)
    assert "vocabulary" in errors[0]
    assert str(n - 10) in errors[0] and str(n) in errors[0]
    # it failed before training: nothing trained, checkpointed or exported
    assert "Trainer.fit" not in proc.stdout + proc.stderr
    assert not (out / "checkpoints").exists() and not (out / "metrics.json").exists() and not (out / "student").exists()


def test_pretrained_student_with_another_tokenizer(byo, cache_dir, tmp_path):
    teacher_dir = save_random_model(tmp_path / "teacher", "llama", byo["tok_a"])
    student_dir = save_random_model(tmp_path / "student-model", "llama", byo["tok_b"])
    out = tmp_path / "run"
    proc = run_cli(
        byo_args(teacher_dir, byo["data"], out, "student=pretrained", f"student.path={student_dir}"), cache_dir
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = _error_lines(proc)
    assert len(errors) == 1 and errors[0] == _last_line(proc)
    # forward KL compares token by token: the one-line refusal names the cross-tokenizer objectives
    assert (
        "student's tokenizer differs from the teacher's" in errors[0]
        and "loss=gold, loss=prefix_kl, loss=projected_kl or loss=uld" in errors[0]
    )
    assert "Trainer.fit" not in proc.stdout + proc.stderr
    assert not (out / "metrics.json").exists()


def test_pretrained_student_with_another_tokenizer_distills_across_vocabularies(byo, cache_dir, tmp_path):
    teacher_dir = save_random_model(tmp_path / "teacher", "llama", byo["tok_a"])
    student_dir = save_random_model(tmp_path / "student-model", "qwen2", byo["tok_b"])
    out = tmp_path / "run"
    args = byo_args(teacher_dir, byo["data"], out, "student=pretrained", f"student.path={student_dir}", "loss=gold")
    proc = run_cli(args, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["student.bits_per_byte"] > 0 and "student.top1_agreement" in metrics
    exported = AutoTokenizer.from_pretrained(out / "student")
    assert exported.get_vocab() == AutoTokenizer.from_pretrained(student_dir).get_vocab()  # its own, kept


def test_pretrained_student_sharing_the_tokenizer(byo, cache_dir, tmp_path):
    """A pretrained student of another architecture distils fine when it shares the teacher's tokenizer."""
    teacher_dir = save_random_model(tmp_path / "teacher", "llama", byo["tok_a"])
    student_dir = save_random_model(tmp_path / "student-model", "gpt2", byo["tok_a"], seed=1)
    out = tmp_path / "run"
    proc = run_cli(
        byo_args(teacher_dir, byo["data"], out, "student=pretrained", f"student.path={student_dir}"), cache_dir
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert DESIGN_KEYS <= set(metrics)
    student = AutoModelForCausalLM.from_pretrained(out / "student")
    assert type(student) is GPT2LMHeadModel and student.config.num_hidden_layers == 2
    initial = AutoModelForCausalLM.from_pretrained(student_dir)
    assert metrics["student.params"] == sum(p.numel() for p in initial.parameters())
    assert not torch.equal(student.transformer.h[0].attn.c_attn.weight, initial.transformer.h[0].attn.c_attn.weight)
