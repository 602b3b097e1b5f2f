"""distill-eval's pieces: naming the models, the table (across tokenizers: test_compare_tokenizers.py)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from distill.errors import DistillError
from distill.eval.compare import add_ratios, model_paths, to_markdown
from tests.student.tiny_models import tiny_model_dir


def test_names_from_a_list_a_dict_or_one_path(tmp_path):
    a = tiny_model_dir(tmp_path / "runs" / "a" / "student", 300)
    b = tiny_model_dir(tmp_path / "runs" / "b" / "student", 300)
    assert list(model_paths(OmegaConf.create([str(a), str(b)]))) == ["a/student", "b/student"]
    assert list(model_paths(OmegaConf.create({"kd": str(a), "t": str(b)}))) == ["kd", "t"]
    assert list(model_paths(str(a))) == ["student"]
    with pytest.raises(DistillError, match="does not exist"):
        model_paths([str(tmp_path / "nope")])
    with pytest.raises(DistillError, match="models is empty"):
        model_paths([])


def test_table_has_a_row_per_model_and_ratios_to_the_reference():
    rows = {
        "t": {"params": 4e6, "size_bytes": 16e6, "val_ppl": 10.0, "scoring_tokens_per_s": 100.0, "ms_per_token": 4.0},
        "s": {
            "params": 1e6,
            "size_bytes": 4e6,
            "val_ppl": 12.0,
            "top1_agreement": 0.5,
            "kl_to_teacher": 0.25,
            "scoring_tokens_per_s": 300.0,
            "ms_per_token": 2.0,
        },
    }
    add_ratios(rows, "t")
    assert rows["s"]["params_x"] == 4.0 and rows["s"]["speed_x"] == 3.0 and rows["s"]["gen_speed_x"] == 2.0
    result = {
        "reference": "t",
        "models": rows,
        "samples": {"s": [{"prompt": "def", "completion": " f():"}]},
        "data": {"val_tokens": 10, "val_blocks": 1, "seq_len": 10, "speed_batches": 1, "speed_batch_size": 1},
        "device": "cpu",
        "precision": "32",
        "settings": {"new_tokens": 4, "rounds": 1},
    }
    md = to_markdown(result)
    assert "| s | 1.00M | 3.8 MiB | 12.000 | 0.500 | 0.2500 | 300 |" in md
    assert "| t | 4.00M |" in md and "| 4.00 | 3.00 |" in md
    assert "def f():" in md
