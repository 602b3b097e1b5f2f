"""``distill-train ... plan=true`` as a user runs it: the plan printed from a dir holding only config.json,
nothing trained or checkpointed; and (slow) the plan against the peak a real run measures on CPU."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import run_cli
from tests.student.test_real_shapes import FIXTURES

pytestmark = pytest.mark.cli

# The plan's peak, less the weights already resident when training starts, against the growth of the
# run's resident memory during training (VmHWM - VmRSS at the start, distill/callbacks/throughput.py).
# Measured on 2 CPU cores: 1.05 (chunked loss, fp32 teacher), 1.01 (fused loss, bf16 teacher); 0.97-1.04 on
# other sizes, vocabularies and batches with the same model in a plain Lightning fit.
TOLERANCE = (0.9, 1.2)


def test_plan_from_a_dir_with_only_config_json(tmp_path, cache_dir):
    teacher = tmp_path / "llama-3.1-8b"
    teacher.mkdir()
    shutil.copy(FIXTURES / "llama-3.1-8b" / "config.json", teacher)
    run = tmp_path / "run"
    proc = run_cli(
        [
            "plan=true",
            f"teacher.path={teacher}",
            "student=width",
            "student.hidden_size=3072",
            "student.intermediate_size=9216",
            "trainer=fsdp",
            "trainer.devices=8",
            "trainer.strategy.shard_teacher=true",
            "teacher.load_in=bf16",
            "data.seq_len=4096",
            "data.batch_size=1",
            f"hydra.run.dir={run}",
        ],
        cache_dir,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for text in ("plan (no weights loaded", "4.51B params", "8 × cuda · fsdp, teacher sharded", "memory per device"):
        assert text in out, text
    for part in ("student weights", "teacher weights", "gradients", "optimizer", "activations", "loss buffers"):
        assert f"    {part}" in out, part
    assert "largest micro-batch that fits" in out and "device-hours" in out
    plan = json.loads((run / "plan.json").read_text())
    assert plan["student"]["params"] == 4_512_746_496 and plan["fits"]
    # nothing was loaded, built or trained
    assert not (run / "checkpoints").exists() and not (run / "metrics.json").exists() and not (run / "student").exists()


def test_a_bad_plan_is_one_line(tmp_path, cache_dir):
    proc = run_cli(["plan=true", f"teacher.path={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}"], cache_dir)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0
    assert lines[-1].startswith("distill-train: error:") and "no config.json" in lines[-1], lines[-1]
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A random 29.5M-parameter Llama (hidden 512, 8 layers) and its own 8,192-token BPE: big enough that
    the model's memory dominates the process's."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from distill.data.sources import stdlib_documents
    from distill.data.tokenizer import train_bpe

    path = tmp_path_factory.mktemp("teacher")
    train_bpe([d.text for d in stdlib_documents(max_docs=60)], 8192, path)
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=8,
        num_attention_heads=8,
        max_position_embeddings=512,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["loss.fused_linear=true", "teacher.load_in=bf16"]], ids=["chunked", "fused"])
def test_the_plan_against_the_measured_peak(extra, teacher_dir, tmp_path, cache_dir, monkeypatch):
    """The same command line planned and run: the run's fit-check estimate is the plan's peak (one memory
    model), and the plan is within ``TOLERANCE`` of the memory training really added."""
    # large allocations straight from mmap, so freed tensors leave the resident set (glibc would keep them)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    args = [
        "experiment=smoke",
        f"teacher.path={teacher_dir}",
        "student=every_other_layer",
        "data.max_docs=200",
        "data.seq_len=256",
        "data.batch_size=8",
        "trainer.max_steps=2",
        "trainer.precision=32-true",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "loss.compile=false",
        "control=false",
        *extra,
    ]
    planned = run_cli([*args, "plan=true", f"hydra.run.dir={tmp_path / 'plan'}"], cache_dir)
    assert planned.returncode == 0, planned.stderr[-3000:]
    ran = run_cli([*args, f"hydra.run.dir={tmp_path / 'run'}"], cache_dir)
    assert ran.returncode == 0, ran.stderr[-3000:]
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    memory = plan["memory"]
    assert metrics["memory.estimate_bytes"] == pytest.approx(memory["total"])
    assert metrics["student.params"] == plan["student"]["params"]
    resident = memory["student weights"] + memory["teacher weights"]  # loaded before training starts
    ratio = (memory["total"] - resident) / metrics["train.rss_growth_bytes"]
    assert TOLERANCE[0] <= ratio <= TOLERANCE[1], (ratio, memory, metrics["train.rss_growth_bytes"])
