"""The FineWeb-Edu-style classifier on the local MiniLM: prose labelled high, character noise low."""

from __future__ import annotations

import json

import numpy as np
import pytest
from datatrove.data import Document

from distill.data.filters.classifier import QualityClassifier, embed_texts, read_labels, train_head
from distill.errors import DistillError


@pytest.fixture(scope="module")
def paragraphs(prose) -> list[str]:
    return [p for doc in prose for p in doc.split("\n\n") if len(p) > 80]


def labelled(paragraphs, noise, n: int = 12) -> tuple[list[str], list[float]]:
    texts = paragraphs[:n] + [noise(100 + i, 200 + 20 * i) for i in range(n)]
    return texts, [4.0 + (i % 2) for i in range(n)] + [float(i % 2) for i in range(n)]


def write_labels(path, texts, scores, extra_lines=()):
    lines = [json.dumps({"text": t, "score": s}) for t, s in zip(texts, scores)]
    path.write_text("\n".join([*lines, *extra_lines]) + "\n")
    return path


def test_embeddings_are_normalised_and_independent_of_batching(paragraphs):
    texts = [paragraphs[0], "short", "", paragraphs[1] * 3]
    emb = embed_texts(texts, batch_size=32)
    assert emb.shape == (4, 384) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.allclose(embed_texts(texts, batch_size=1), emb, atol=1e-5)


def test_head_learns_prose_vs_noise(paragraphs, noise):
    texts, scores = labelled(paragraphs, noise)
    head, metrics = train_head(embed_texts(texts), scores, seed=0)
    assert metrics["n_heldout"] == 5 and metrics["n_train"] == 19
    assert metrics["spearman"] > 0.5 and metrics["r2"] > 0.5
    unseen = embed_texts(paragraphs[12:16] + [noise(7), noise(8)])
    pred = head.predict(unseen)
    assert (pred[:4] > 3).all() and (pred[4:] < 3).all()
    again, _ = train_head(embed_texts(texts), scores, seed=0)  # seeded: the same head
    assert np.allclose(again.predict(unseen), pred)


def test_stage_drops_noise_and_caches_its_head(paragraphs, noise, make_ctx, apply, tmp_path):
    labels = write_labels(tmp_path / "labels.jsonl", *labelled(paragraphs, noise))
    docs = [Document(text=p, id=f"prose{i}") for i, p in enumerate(paragraphs[12:18])]
    docs += [Document(text=noise(50 + i), id=f"noise{i}") for i in range(4)]
    ctx, input_dir = make_ctx(docs, tasks=2)
    stage = QualityClassifier(labels=str(labels))
    stage.prepare(ctx, input_dir)
    decisions = json.loads((ctx.work_dir / "decisions.json").read_text())
    assert decisions == {f"noise{i}": "classifier_below_threshold" for i in range(4)}
    assert sorted(d.id for d in apply(stage.steps(ctx), docs)) == sorted(f"prose{i}" for i in range(6))
    metrics = json.loads((ctx.work_dir / "head_metrics.json").read_text())
    assert metrics["labels"] == 24 and metrics["labels_skipped"] == 0

    head = ctx.work_dir / "head.pt"
    stamp = head.stat().st_mtime_ns
    stage.prepare(ctx, input_dir)  # same labels: the saved head is reused
    assert head.stat().st_mtime_ns == stamp
    write_labels(labels, *labelled(paragraphs, noise, n=10))  # new labels: retrained, new cache key
    assert QualityClassifier(labels=str(labels)).config() != stage.config()
    QualityClassifier(labels=str(labels)).prepare(ctx, input_dir)
    assert head.stat().st_mtime_ns != stamp


def test_malformed_label_lines_are_skipped_and_counted(tmp_path):
    bad = [
        "not json",
        "[1, 2]",
        '{"text": "no score"}',
        '{"score": 3}',
        '{"text": "", "score": 1}',
        '{"text": "a word", "score": "high"}',
        '{"text": "a word", "score": true}',
        '{"text": "x", "score": NaN}',
    ]
    texts = [f"document number {i}" for i in range(8)]
    path = write_labels(tmp_path / "labels.jsonl", texts, list(range(8)), bad)
    got_texts, got_scores, skipped = read_labels(path)
    assert got_texts == texts and got_scores == list(map(float, range(8))) and skipped == len(bad)

    write_labels(path, texts[:7], list(range(7)), bad)
    with pytest.raises(DistillError, match="7 valid labelled rows .8 malformed lines skipped"):
        read_labels(path)


def test_stage_requires_labels(tmp_path):
    with pytest.raises(DistillError, match="labels is required"):
        QualityClassifier()
    with pytest.raises(DistillError, match="no such file"):
        QualityClassifier(labels=str(tmp_path / "missing.jsonl"))
