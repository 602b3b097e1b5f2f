"""distill-eval across tokenizers, in process: tiny Llamas whose tokenizers differ are compared by
bits per byte and aligned top-1 agreement; those sharing the reference's keep the per-token metrics."""

from __future__ import annotations

import math

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from distill.data.tokenizer import train_bpe
from distill.errors import DistillError
from distill.eval.compare import add_ratios, load_tokenizers, run_eval, shared_with, to_markdown
from tests.align.helpers import corpus
from tests.compose import CONFIG_DIR
from tests.student.tiny_models import tiny_model


def model_dir(path, tokenizer_dir, seed=0):
    """A tiny Llama saved with the tokenizer in ``tokenizer_dir`` (a model dir as users pass one)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    tiny_model("llama", vocab_size=len(tok), seed=seed, max_position_embeddings=128).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """t and s share a 400-token BPE (different weights); x has its own 700-token BPE."""
    root = tmp_path_factory.mktemp("models")
    docs = corpus()[:3]
    for size in (400, 700):
        train_bpe(docs, size, root / f"bpe{size}")
    return {
        "t": model_dir(root / "t", root / "bpe400"),
        "s": model_dir(root / "s", root / "bpe400", seed=1),
        "x": model_dir(root / "x", root / "bpe700", seed=2),
    }


def test_models_share_the_references_tokenization_or_not(model_dirs, tmp_path):
    tokenizers = load_tokenizers(model_dirs)
    assert shared_with("t", tokenizers) == ["t", "s"] and shared_with("x", tokenizers) == ["x"]
    with pytest.raises(DistillError, match=r"models\.y: cannot load a tokenizer from"):
        load_tokenizers({"y": tmp_path})


def test_eval_compares_models_with_different_tokenizers(model_dirs, out_dir):
    models = ", ".join(f"{name}: {path}" for name, path in model_dirs.items())
    overrides = [
        f"hydra.runtime.output_dir={out_dir}",
        "experiment=smoke",
        "data.max_docs=12",
        "data.max_val_blocks=4",
        "data.batch_size=2",
        f"models={{{models}}}",
        "speed.batches=1",
        "speed.rounds=1",
        "speed.warmup=0",
        "speed.new_tokens=2",
        "generation.max_new_tokens=2",
        "generation.prompts=[def]",
        "lm_eval.max_items=2",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    result = run_eval(cfg)
    rows = result["models"]
    for name, row in rows.items():  # every model, on one scale
        assert math.isfinite(row["bits_per_byte"]) and row["bits_per_byte"] > 0, name
        assert row["bits_per_char"] * result["data"]["text_chars"] == pytest.approx(
            row["bits_per_byte"] * result["data"]["text_bytes"]
        )
        assert row["scoring_tokens_per_s"] > 0 and math.isfinite(row["speed_x"]) and len(result["samples"][name]) == 1
    # the same tokenizer: the per-token metrics as before, and the same bits per byte for equal models' text
    assert rows["t"]["shared_tokenizer"] and rows["s"]["shared_tokenizer"] and not rows["x"]["shared_tokenizer"]
    assert math.isfinite(rows["s"]["val_ppl"]) and 0 <= rows["s"]["top1_agreement"] <= 1
    assert rows["s"]["kl_to_teacher"] > 0 and "aligned_top1_agreement" not in rows["s"]
    assert rows["t"]["bytes_per_token"] == rows["s"]["bytes_per_token"]
    # a different tokenizer: no per-token metrics, agreement on aligned same-string positions instead
    assert not {"val_ppl", "top1_agreement", "kl_to_teacher"} & set(rows["x"])
    assert 0 <= rows["x"]["aligned_top1_agreement"] <= 1 and rows["x"]["aligned_positions"] > 50
    assert rows["x"]["bytes_per_token"] > rows["t"]["bytes_per_token"]  # the larger vocabulary: longer tokens
    assert result["data"]["text_chars"] > 0 and result["data"]["text_docs"] >= 1
    table = (out_dir / "eval.md").read_text()
    assert "| bits/byte | bits/char |" in table and "top-1 agreement (aligned)" in table
    assert "x: a tokenizer other than t's" in table and f"x: {rows['x']['aligned_positions']:,}" in table


def test_speed_ratios_across_tokenizers_are_per_byte():
    rows = {
        "t": {"params": 4e6, "size_bytes": 4e6, "scoring_tokens_per_s": 100.0, "ms_per_token": 4.0},
        "x": {
            "params": 1e6,
            "size_bytes": 1e6,
            "scoring_tokens_per_s": 100.0,
            "ms_per_token": 4.0,
            "shared_tokenizer": False,
            "bytes_per_token": 2.0,
            "bits_per_byte": 1.5,
        },
    }
    rows["t"].update(shared_tokenizer=True, bytes_per_token=4.0, bits_per_byte=1.25)
    add_ratios(rows, "t")
    assert rows["x"]["speed_x"] == 0.5 and rows["x"]["gen_speed_x"] == 0.5  # as many tokens, half the text
    assert rows["t"]["speed_x"] == 1.0
    result = {
        "reference": "t",
        "models": rows,
        "samples": {},
        "data": {
            "val_tokens": 10,
            "val_blocks": 1,
            "seq_len": 10,
            "speed_batches": 1,
            "speed_batch_size": 1,
            "text_docs": 1,
            "text_chars": 100,
            "text_bytes": 120,
        },  # fmt: skip
        "device": "cpu",
        "precision": "32",
        "settings": {"new_tokens": 4, "rounds": 1},
    }
    md = to_markdown(result)
    assert (
        "| x | 1.00M | 1.0 MiB | 1.500 | 100 | 4.00 | 4.00 | 0.50 |" in md and "100 characters (120 UTF-8 bytes)" in md
    )
