"""The compression summary: ratios, teacher FLOPs and the report section, from metrics alone."""

from __future__ import annotations

import pytest

from distill.eval.compression import compression_metrics, compression_section, teacher_forward_tokens


def _dirs(tmp_path):
    t, s = tmp_path / "t", tmp_path / "s"
    t.mkdir(), s.mkdir()
    (t / "model.safetensors").write_bytes(b"0" * 4000)
    (s / "model.safetensors").write_bytes(b"0" * 1000)
    return t, s


def test_ratios_flops_and_wall_time(tmp_path):
    t, s = _dirs(tmp_path)
    metrics = {
        "teacher.params": 800,
        "student.params": 200,
        "teacher.val_ppl": 10.0,
        "student.val_ppl": 12.5,
        "teacher.scoring_tokens_per_s": 100.0,
        "student.scoring_tokens_per_s": 300.0,
        "train.tokens": 64,
    }
    out = compression_metrics(metrics, t, s, forward_tokens=64, run_wall_s=3.0)
    assert out["compression.params_x"] == 4.0
    assert out["compression.size_x"] == 4.0
    assert out["compression.speed_x"] == 3.0
    assert out["compression.ppl_delta"] == 2.5
    assert out["teacher.forward_flops"] == 2 * 800 * 64
    assert out["run.wall_s"] == 3.0
    text = "\n".join(compression_section({**metrics, **out}))
    assert "| parameters | 0.00M → 0.00M | 4.00 |" in text and "Δ +2.500" in text and "1.02e+05 FLOPs" in text


def test_missing_inputs_are_left_out(tmp_path):
    _, s = _dirs(tmp_path)
    out = compression_metrics({"student.params": 200}, None, s, forward_tokens=None, run_wall_s=None)
    assert set(out) == {"student.size_bytes"}
    assert "| parameters" not in "\n".join(compression_section(out))


@pytest.mark.parametrize("backend,expected", [("live", 512), ("none", None), ("cache", 3 * 64 + 0)])
def test_teacher_forward_tokens(backend, expected):
    manifest = {"seq_len": 64, "splits": {"train": {"num_rows": 2}, "val": {"num_rows": 1}}}
    assert teacher_forward_tokens(backend, 512, manifest) == expected


def test_a_quantized_student_is_measured_by_its_packed_checkpoint(tmp_path):
    t, s = _dirs(tmp_path)
    metrics = {"teacher.params": 800, "student.params": 800, "quant.packed_bytes": 500}
    out = compression_metrics(metrics, t, s, forward_tokens=None, run_wall_s=None)
    assert out["student.size_bytes"] == 500 and out["compression.size_x"] == 8.0
    assert "(packed low-bit)" in "\n".join(compression_section({**metrics, **out}))
