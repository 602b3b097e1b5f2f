"""distill-train experiment=minilm_embed end to end, at tiny sizes, as a user runs it."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_cli
from tests.run_outputs import assert_terms_active, read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.cli]

TINY = [
    "data.max_docs=20",
    "data.max_train_texts=48",
    "data.max_val_texts=40",
    "data.batch_size=8",
    "data.max_length=32",
    "data.eval_batch_size=20",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.log_every_n_steps=1",
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "embedding.queries=10",
    "embedding.speed_batches=1",
    "embedding.speed_rounds=1",
]
KEYS = {
    "teacher.params",
    "student.params",
    "student.params_ratio",
    "student.embed_cosine",
    "student.top10_overlap",
    "pruned.embed_cosine",
    "pruned.top10_overlap",
    "teacher.sentences_per_s",
    "student.sentences_per_s",
    "speedup",
    "train.tokens",
    "train.tokens_per_s",
    "train.wall_s",
    "val.texts",
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("minilm-embed")
    proc = run_cli(["experiment=minilm_embed", f"hydra.run.dir={out}", *TINY], cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_writes_metrics_report_and_checkpoints(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert KEYS <= set(metrics)
    assert metrics["teacher.params"] == 22_713_216 and metrics["student.params"] < metrics["teacher.params"]
    assert metrics["student.params_ratio"] == pytest.approx(metrics["student.params"] / metrics["teacher.params"])
    for key in ("student.embed_cosine", "pruned.embed_cosine", "student.top10_overlap", "pruned.top10_overlap"):
        assert 0 <= metrics[key] <= 1, key
    assert metrics["val.texts"] == 40 and metrics["speedup"] > 0
    assert "| student, distilled |" in (run_dir / "report.md").read_text()
    assert (run_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "train/cosine", "train/hidden", "val/embed_cosine"} <= set(header)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == 4 and all(k.startswith("student.") for k in ckpt["state_dict"])


def test_distillation_brings_the_student_closer_to_the_teacher(run_dir):
    """What a user checks: on held-out sentences the distilled student's embeddings agree with the
    teacher's better than the pruned student it started from (``pruned.*``: measured before training)."""
    metrics = read_metrics(run_dir)
    assert metrics["student.embed_cosine"] > metrics["pruned.embed_cosine"], metrics
    assert_terms_active(run_dir, "loss", "cosine", "hidden")  # the minilm_embed objective's terms


def test_exported_student_loads_with_transformers_and_sentence_transformers(run_dir):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    from distill.embedding.pooling import encode, read_pooling

    path = run_dir / "student"
    model, tok = AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    assert model.config.num_hidden_layers == 3
    texts = ["Return the number of items in a container.", "Decode the bytes using the codec registered for encoding."]
    batch = tok(texts, padding=True, return_tensors="pt")
    ours = encode(model, [(batch["input_ids"], batch["attention_mask"])], read_pooling(path))
    theirs = SentenceTransformer(str(path), device="cpu").encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_a_causal_objective_is_refused_in_one_line(cache_dir, tmp_path):
    proc = run_cli(["experiment=minilm_embed", "loss=forward_kl", f"hydra.run.dir={tmp_path}"], cache_dir)
    assert proc.returncode == 2
    assert "distill-train: error: task=embedding trains with the embedding objective: use loss=embedding" in proc.stderr
