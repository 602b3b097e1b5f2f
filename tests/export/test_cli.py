"""distill-train with a ggml QAT preset and distill-export, as a user runs them: the run's GGUF holds
the weights the run evaluated; bad input ends in one line, before training, with no file written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import REPO, run_cli
from tests.export.helpers import expected, read

pytestmark = pytest.mark.cli
SMOKE = ["experiment=smoke", "control=false"]


def export_cli(*args: str, cache) -> subprocess.CompletedProcess:
    env = {"DISTILL_CACHE_DIR": str(cache), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", "distill.cli.export", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_line_error(proc, prog: str) -> str:
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(f"{prog}: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def qat_run(cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("qat") / "run"
    proc = run_cli([*SMOKE, "quant=qat_q4_0", f"hydra.run.dir={out}"], cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_a_quantization_start_at_or_after_the_last_step_is_refused_before_training(cache_dir, tmp_path):
    proc = run_cli(
        [*SMOKE, "quant=qat_q4_0", "quant.start_step=4", "trainer.max_steps=4", f"hydra.run.dir={tmp_path}"], cache_dir
    )
    error = one_line_error(proc, "distill-train")
    assert "quant.start_step=4 is not before trainer.max_steps=4" in error and "quant=ptq_q4_0" in error
    assert "student (distilled)" not in proc.stdout + proc.stderr and not (tmp_path / "student").exists()


def test_qat_run_writes_the_gguf_of_the_weights_it_evaluated(qat_run):
    metrics = json.loads((qat_run / "metrics.json").read_text())
    assert metrics["gguf.type"] == "q4_0" and metrics["gguf.file"] == "student.q4_0.gguf"
    assert metrics["quant"]["gguf_type"] == "q4_0"
    path = qat_run / "student.q4_0.gguf"
    assert metrics["gguf.bytes"] == path.stat().st_size
    student = AutoModelForCausalLM.from_pretrained(qat_run / "student")  # the model distill evaluated
    _, tensors = read(path)
    want = expected(student, "llama")
    assert set(tensors) == set(want)
    kinds = {kind for kind, _ in tensors.values()}
    assert kinds == {"Q4_0", "F16", "F32"}
    for name, (_, values) in tensors.items():
        assert torch.equal(values, want[name]), name


def test_distill_export_writes_and_refuses(qat_run, cache_dir):
    proc = export_cli(f"run_dir={qat_run}", "export.gguf=f16", cache=cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (qat_run / "student.f16.gguf").is_file()
    before = sorted(p.name for p in qat_run.iterdir())
    line = one_line_error(export_cli(f"run_dir={qat_run}", "export.gguf=q8_0", cache=cache_dir), "distill-export")
    assert "trained for q4_0" in line
    line = one_line_error(export_cli(f"run_dir={qat_run / 'missing'}", cache=cache_dir), "distill-export")
    assert "neither a run dir" in line
    assert sorted(p.name for p in qat_run.iterdir()) == before


def test_train_refuses_an_unwritable_export_before_training(cache_dir, tmp_path):
    out = tmp_path / "run"
    proc = run_cli([*SMOKE, "export.gguf=tq2_0", f"hydra.run.dir={out}"], cache_dir)
    line = one_line_error(proc, "distill-train")
    assert "tq2_0 (quant= / export.gguf) quantizes rows in blocks of 256" in line and "fallback" in line
    assert "Epoch 0" not in proc.stdout + proc.stderr
    assert not (out / "student").exists() and not list(out.glob("*.gguf"))
