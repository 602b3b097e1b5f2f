"""data=chat end to end, as a user runs it: conversations from JSONL, the template, assistant-only
targets, packing, a live teacher and a cache of it, on-policy answers to the real prompts, and the
exported student that renders prompts exactly as training did."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from distill.data.chat.stdlib_instruct import stdlib_conversations
from tests.conftest import run_cli

pytestmark = pytest.mark.cli


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    """Instruction conversations from stdlib functions, a system prompt on every other one."""
    convs, _ = stdlib_conversations(max_docs=60, max_chars=300)
    path = tmp_path_factory.mktemp("chats") / "chats.jsonl"
    with path.open("w") as f:
        for i, c in enumerate(convs):
            system = [{"role": "system", "content": "You write Python."}] if i % 2 else []
            f.write(json.dumps({"messages": system + list(c.messages)}) + "\n")
    return path


def args(chats, out, *extra) -> list[str]:
    return [
        "experiment=smoke", "data=chat", f"data.paths=[{chats}]", "data.chat_template=chatml", "data.seq_len=192",
        "data.vocab_size=600", f"hydra.run.dir={out}", "control=false", *extra,
    ]  # fmt: skip


def one_line_error(proc, prog="distill-train") -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return proc.stderr.strip().splitlines()[-1].removeprefix(f"{prog}: error: ")


def stored_rows(cache_dir, name: str) -> list[np.ndarray]:
    return [np.load(p) for p in sorted(cache_dir.glob(f"chat/*/{name}.npy"))]


@pytest.mark.slow
def test_packed_chat_run_and_the_exported_template_reproduces_training_tokens(chats, cache_dir, tmp_path):
    out = tmp_path / "run"
    proc = run_cli(args(chats, out, "data.packing=true"), cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads((out / "data_stats.json").read_text())
    assert stats["train"]["rows"] < stats["train"]["kept"]  # several conversations per packed row
    assert stats["val"]["rows"] == stats["val"]["kept"]  # validation: one per row
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["student.val_ppl"] < metrics["student.val_ppl_start"]

    student = AutoTokenizer.from_pretrained(out / "student")
    rendered = set()
    for line in chats.read_text().splitlines():
        ids = student.apply_chat_template(json.loads(line)["messages"])["input_ids"]
        rendered.add(tuple(ids[:193]))
    [val] = [r for r in stored_rows(cache_dir, "val") if r.shape[1] == 193][-1:]
    for row in val:  # every validation row, token for token, is a conversation as the exported template renders it
        n = len(row) if row[-1] != student.pad_token_id else int(np.argmax(row == student.pad_token_id))
        assert tuple(row[:n].tolist()) in rendered
    generation = json.loads((out / "student" / "generation_config.json").read_text())
    assert student.convert_tokens_to_ids("<|im_end|>") in generation["eos_token_id"]  # it stops at the end of turn

    # distill-eval generates through the template: the prompt is a rendered user turn
    speed = ["speed.rounds=1", "speed.batches=1", "speed.new_tokens=2", "generation.max_new_tokens=4"]
    evaluated = [*args(chats, tmp_path / "eval"), f"models=[{out / 'student'}]", "generation.chat=true", *speed]
    proc = run_cli(evaluated, cache_dir, prog="distill-eval")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [sample, *_] = json.loads((tmp_path / "eval" / "eval.json").read_text())["samples"]["student"]
    assert sample["prompt"] == "def __init__(self" and "<|im_start|>" not in sample["completion"]


@pytest.mark.slow
def test_chat_cache_serves_training_and_another_mask_is_refused(chats, cache_dir, tmp_path):
    teacher_cache = tmp_path / "teacher_cache"
    proc = run_cli(args(chats, tmp_path / "c", f"teacher.cache_dir={teacher_cache}"), cache_dir, prog="distill-cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((teacher_cache / "manifest.json").read_text())["chat_key"]
    cached = args(chats, tmp_path / "t", "teacher=cache", f"teacher.cache_dir={teacher_cache}")
    proc = run_cli(cached, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "t" / "metrics.json").read_text())["teacher.source"] == "cache"
    line = one_line_error(run_cli([*cached, "data.train_on=last"], cache_dir))
    assert "another chat template or loss mask (data.chat_template, data.train_on, data.packing)" in line


@pytest.mark.slow
@pytest.mark.parametrize(
    "objective",
    [
        ["loss=gkd", "loss.on_policy.lmbda=1.0", "loss.on_policy.max_new_tokens=8"],  # the student answers
        ["seq_kd.enabled=true", "seq_kd.new_tokens=8"],  # the teacher answers, once
    ],
    ids=["gkd", "seqkd"],
)
def test_answers_to_the_real_prompts(objective, chats, cache_dir, tmp_path):
    out = tmp_path / "run"
    proc = run_cli(args(chats, out, *objective), cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["train.steps"] == 20
    generation = json.loads((out / "student" / "generation_config.json").read_text())
    assert len(generation["eos_token_id"]) == 2  # EOS and <|im_end|>, whatever the training data was


def test_refusals_before_any_training(chats, cache_dir, tmp_path):
    no_template = [a for a in args(chats, tmp_path / "a") if not a.startswith("data.chat_template")]
    assert one_line_error(run_cli(no_template, cache_dir)).startswith(
        "no chat template: a tokenizer trained here has none"
    )
    packed_gkd = args(chats, tmp_path / "b", "data.packing=true", "loss=gkd")
    assert "data.packing=true with on-policy" in one_line_error(run_cli(packed_gkd, cache_dir))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "human", "content": "hi"}]}) + "\n")
    line = one_line_error(run_cli(args(bad, tmp_path / "c"), cache_dir))
    assert line == f"{bad}:1: messages[0]: unknown role 'human' (expected one of system, user, assistant, tool)"


@pytest.mark.slow
def test_black_box_chat_needs_no_teacher(chats, cache_dir, tmp_path):
    """teacher=none: the assistant turns are the teacher's (an API's) answers; CE on them only."""
    out = tmp_path / "run"
    proc = run_cli(args(chats, out, "teacher=none", "student=scratch", "trainer.max_steps=5"), cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["teacher.source"] == "none" and "teacher.val_ppl" not in metrics
    assert json.loads((out / "data_stats.json").read_text())["train"]["target_tokens"] > 0
