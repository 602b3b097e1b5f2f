"""Exact and near (MinHash) deduplication across every shard of the corpus.

Both stages work in two halves. ``prepare`` reads the whole materialised corpus and writes, per
shard, which documents to drop: ``{work_dir}/<tag>/decisions/{rank:05d}.json`` =
``{index_in_shard: [doc_id, reason]}``. ``steps`` is one ``ShardDecisionFilter`` that drops them
in the next pass, so datatrove's stats count ``dropped_exact_duplicate`` and
``dropped_near_duplicate`` like any other filter reason, under the step ``🗑 <stage name>``.

Why per-shard indices and not ``DecisionFilter``'s ``{doc_id: reason}``: copies of a document
often share its id (the same source listed twice), and an id-keyed decision would drop the copy
we keep too. Each decision also stores the doc id, and the filter fails loudly when the id at
that index differs, i.e. when the pass does not read what ``prepare`` read.

What the runner must guarantee: the pass that runs ``steps`` reads ``input_dir`` (the directory
given to ``prepare``) with the same ``ctx.tasks``, and the stage's filter is the first step after
the reader (an earlier filter would shift the indices).

Both keep the earliest copy in (shard, index) order, so a rerun gives the same result.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupSignature,
)
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils.hashing import HashConfig, create_hash_func

from distill.cache import write_atomic
from distill.data.filters.stage import FilterContext, FilterStage, write_decisions


class RecordShard(PipelineStep):
    """Pass-through step writing each document's id (and a content hash) for its shard.

    Documents are numbered in stream order, as MinHash's signature step numbers them."""

    name = "🧾 record shard"
    type = "🫂 - DEDUP"

    def __init__(self, out_dir: str | Path, content_hash: bool = False, normalize: bool = True):
        super().__init__()
        self.out_dir = str(out_dir)
        self.content_hash = content_hash
        self.normalize = normalize

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        hash_fn = create_hash_func(HashConfig(precision=64, hash_fc="xxhash"), bytes)
        ids, hashes = [], []
        for doc in data:
            ids.append(doc.id)
            if self.content_hash:
                hashes.append(hash_fn((normalize(doc.text) if self.normalize else doc.text).encode()))
            yield doc
        out = Path(self.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        # written whole and renamed: a task killed midway leaves no file a rerun could trust
        buf = io.BytesIO()
        np.save(buf, np.asarray(hashes, dtype=np.uint64))
        write_atomic(out / f"{rank:05d}.hashes.npy", buf.getvalue())
        write_atomic(out / f"{rank:05d}.ids.json", json.dumps(ids).encode())


def normalize(text: str) -> str:
    """Strip and collapse whitespace: re-indented or re-wrapped copies are still exact copies."""
    return " ".join(text.split())


class ShardDecisionFilter(BaseFilter):
    """Drops the documents ``prepare`` listed for this shard, by their index in the shard."""

    name = "🗑 shard decisions"

    def __init__(self, decisions_dir: str | Path, exclusion_writer=None, name: str | None = None):
        if name:
            self.name = name  # before super().__init__, which names the stats after it
        super().__init__(exclusion_writer)
        self.decisions_dir = str(decisions_dir)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        raw = json.loads((Path(self.decisions_dir) / f"{rank:05d}.json").read_text())
        self._drops = {int(i): tuple(v) for i, v in raw.items()}
        self._index = 0
        yield from super().run(data, rank, world_size)
        if self._drops and max(self._drops) >= self._index:
            raise RuntimeError(
                f"shard {rank} has {self._index} documents but a decision for index "
                f"{max(self._drops)}: the pass does not read what prepare read"
            )

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        # BaseFilter.run (batch_size 1) calls filter once per document, in stream order
        index, self._index = self._index, self._index + 1
        drop = self._drops.get(index)
        if drop is None:
            return True
        doc_id, reason = drop
        if doc.id != doc_id:
            raise RuntimeError(
                f"document {index} is {doc.id!r}, prepare saw {doc_id!r}: the pass does not read what prepare read"
            )
        return False, reason


def write_shard_decisions(out_dir: Path, tasks: int, drops: dict[int, list[int]], ids_dir: Path, reason: str) -> None:
    """One decisions file per shard (empty ones too: a missing file means prepare did not run)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for rank in range(tasks):
        ids = json.loads((ids_dir / f"{rank:05d}.ids.json").read_text()) if drops.get(rank) else []
        decisions = {str(i): [ids[i], reason] for i in sorted(drops.get(rank, []))}
        write_decisions(out_dir / f"{rank:05d}.json", decisions)


class _DedupStage(FilterStage):
    """What both stages share: a global ``prepare`` and a filter reading its decisions."""

    needs_prepare = True

    def _dir(self, ctx: FilterContext) -> Path:
        raise NotImplementedError

    def config(self) -> dict:
        return {"stage": type(self).__name__, **super().config()}

    def steps(self, ctx: FilterContext) -> list[PipelineStep]:
        return [ShardDecisionFilter(self._dir(ctx) / "decisions", name=f"🗑 {self.name}")]


class ExactDedup(_DedupStage):
    """Drops every copy of a document but the first, by a 64-bit xxhash of its (normalised) text."""

    def __init__(self, name: str = "exact_dedup", normalize: bool = True):
        self.name = name
        self.normalize = normalize

    def _dir(self, ctx: FilterContext) -> Path:
        return ctx.work_dir / ("normalized" if self.normalize else "raw")

    def prepare(self, ctx: FilterContext, input_dir: Path) -> None:
        shards = self._dir(ctx) / "shards"
        ctx.run(
            [RecordShard(shards, content_hash=True, normalize=self.normalize)],
            f"{self.name}_hash_{self._dir(ctx).name}",
            input_dir,
        )
        hashes = [np.load(shards / f"{r:05d}.hashes.npy") for r in range(ctx.tasks)]
        # np.unique's return_index is the first occurrence in (shard, index) order
        _, first = np.unique(np.concatenate(hashes), return_index=True)
        keep = np.zeros(sum(len(h) for h in hashes), dtype=bool)
        keep[first] = True
        offsets = np.cumsum([0] + [len(h) for h in hashes])
        drops = {r: np.flatnonzero(~keep[offsets[r] : offsets[r + 1]]).tolist() for r in range(ctx.tasks)}
        write_shard_decisions(self._dir(ctx) / "decisions", ctx.tasks, drops, shards, "exact_duplicate")


class MinhashDedup(_DedupStage):
    """Near-duplicate removal with datatrove's MinHash + LSH (signature, buckets, clusters).

    Defaults are FineWeb's (``datatrove/examples/fineweb.py``): word 5-grams, 14 buckets of 8
    hashes, so documents with Jaccard similarity above ~0.72 ((1/14)^(1/8)) likely collide. Of
    each cluster we keep the earliest document in (shard, index) order."""

    def __init__(
        self, name: str = "minhash", n_grams: int = 5, num_buckets: int = 14, hashes_per_bucket: int = 8, seed: int = 1
    ):
        self.name = name
        self.n_grams = n_grams
        self.num_buckets = num_buckets
        self.hashes_per_bucket = hashes_per_bucket
        self.seed = seed

    def _config(self) -> MinhashConfig:
        # sha1 shingle hashes, not datatrove's default xxhash: datatrove 0.10 passes str to xxhash,
        # which xxhash>=4 refuses (datatrove's own extra pins xxhash<4); sha1 works with either
        return MinhashConfig(
            n_grams=self.n_grams,
            num_buckets=self.num_buckets,
            hashes_per_bucket=self.hashes_per_bucket,
            seed=self.seed,
            hash_config=HashConfig(precision=64, hash_fc="sha1"),
        )

    def _dir(self, ctx: FilterContext) -> Path:
        # one folder per setting: a changed setting never reuses another's signatures
        return ctx.work_dir / f"{self.n_grams}ng_{self.num_buckets}x{self.hashes_per_bucket}_s{self.seed}"

    def prepare(self, ctx: FilterContext, input_dir: Path) -> None:
        root, config = self._dir(ctx), self._config()
        ctx.run(
            [RecordShard(root / "ids"), MinhashDedupSignature(str(root / "signatures"), config=config)],
            f"{self.name}_signature_{root.name}",
            input_dir,
        )
        # buckets and clusters read signature files, not documents: no reader, their own task counts
        self._local(
            [MinhashDedupBuckets(str(root / "signatures"), str(root / "buckets"), config=config)],
            config.num_buckets,
            root / "logs" / "buckets",
        )
        self._local(
            [MinhashDedupCluster(str(root / "buckets"), str(root / "clusters"), config=config, save_cluster_id=True)],
            1,
            root / "logs" / "clusters",
        )
        drops = cluster_drops(root / "clusters", ctx.tasks)
        write_shard_decisions(root / "decisions", ctx.tasks, drops, root / "ids", "near_duplicate")

    @staticmethod
    def _local(pipeline: list[PipelineStep], tasks: int, logging_dir: Path) -> None:
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1, logging_dir=str(logging_dir)).run()


def cluster_drops(clusters_dir: Path, tasks: int) -> dict[int, list[int]]:
    """From datatrove's ``{rank:06d}.clusters`` ((index, cluster id) pairs of every clustered
    document), everything but each cluster's earliest (shard, index) member."""
    ranks, indices, cluster_ids = [], [], []
    for rank in range(tasks):
        path = clusters_dir / f"{rank:06d}.clusters"
        if path.exists():
            pairs = np.fromfile(path, dtype="<u4").reshape(-1, 2)
            ranks.append(np.full(len(pairs), rank))
            indices.append(pairs[:, 0])
            cluster_ids.append(pairs[:, 1])
    if not ranks:
        return {}
    rank, index, cid = (np.concatenate(a).astype(np.int64) for a in (ranks, indices, cluster_ids))
    order = np.lexsort((index, rank, cid))  # by cluster, then (shard, index)
    first = np.ones(len(order), dtype=bool)
    first[1:] = cid[order][1:] != cid[order][:-1]
    drops: dict[int, list[int]] = {}
    for r, i in zip(rank[order][~first].tolist(), index[order][~first].tolist()):
        drops.setdefault(r, []).append(i)
    return drops
