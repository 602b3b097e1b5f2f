"""Prompt/response data: black-box distillation, where the teacher is only its answers.

The Alpaca recipe: a dataset of prompts and the responses a (often proprietary) teacher gave
is the whole teacher; the student is trained with cross-entropy on the response tokens only.
Each example becomes one row ``prompt + response + EOS``, cut or right-padded to
``seq_len + 1`` tokens; its targets are -100 (ignored by the loss) on the prompt and on the
padding, so the student learns to answer, not to write prompts.

Decisions:

- A row with a missing field or a non-string value (null included) is a ``DistillError``
  naming the file and line/row: it is nearly always a wrong ``prompt_field`` or a broken
  export, and skipping it silently could drop most of the data. Filter failed API calls out
  before training.
- An example whose prompt fills the whole row, so that not one response token (or EOS) is a
  target, is skipped and counted; one whose response is only cut short is kept (and counted
  as truncated). Both counts are logged on every setup and kept in ``stats``.
- Prompt and response are tokenized separately and concatenated, so the boundary is exact
  and matches inference (tokenize the prompt, then generate). A real BOS token (one that is
  not the EOS, as Llama's ``<s>``) starts each row.
- The split is by prompt text: duplicated prompts never land in both train and validation.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from distill.cache import cached_dir, fingerprint, text_fingerprint
from distill.data.datamodule import TextDataModule
from distill.data.sampler import data_shard, eval_loader, train_loader
from distill.data.sources import Document, jsonl_records
from distill.data.split import split_documents
from distill.data.tokenizer import train_bpe
from distill.errors import DistillError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
DEFAULT_TEMPLATE = "{prompt}\n"


@dataclass(frozen=True)
class Example:
    id: str  # "<file>#<line or row>", unique
    prompt: str
    response: str


# -- reading ------------------------------------------------------------------------------------------------


def prompt_response_examples(
    paths: list[str] | str,
    prompt_field: str = "prompt",
    response_field: str = "response",
    max_examples: int | None = None,
) -> list[Example]:
    """Examples from local JSONL / Parquet files or ``save_to_disk`` datasets (globs expanded)."""
    paths = [paths] if isinstance(paths, str) else list(paths or [])
    if not paths:
        raise DistillError("data.paths is empty: give at least one JSONL / Parquet file or dataset directory")
    fields = (prompt_field, response_field)
    examples: list[Example] = []
    seen: set[str] = set()  # a file matched by two patterns is read once
    for pattern in paths:
        matches = sorted(glob.glob(str(Path(pattern).expanduser()), recursive=True))
        if not matches:
            raise DistillError(f"data.paths: nothing matches {pattern!r}")
        for match in matches:
            if os.path.realpath(match) not in seen:
                seen.add(os.path.realpath(match))
                examples.extend(_read_path(Path(match), fields))
            if max_examples is not None and len(examples) >= max_examples:
                return examples[:max_examples]
    return examples


def _read_path(path: Path, fields: tuple[str, str]) -> list[Example]:
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return _read_saved_dataset(path, fields)
        raise DistillError(f"data.paths: {path} is a directory but not a datasets.save_to_disk dataset")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path, fields)
    if suffix == ".parquet":
        return _read_parquet(path, fields)
    raise DistillError(f"{path}: prompt/response data must be JSONL, Parquet or a save_to_disk dataset")


def _example(where: str, record: dict, fields: tuple[str, str], hint: str) -> Example:
    """One record -> Example, or a one-line error that says where and what is wrong."""
    values = []
    for name in fields:
        if name not in record:
            raise DistillError(f"{where}: record has no field {name!r} ({hint}; fields: {sorted(record)})")
        if not isinstance(record[name], str):
            raise DistillError(f"{where}: field {name!r} is {type(record[name]).__name__}, not a string")
        values.append(record[name])
    return Example(where, *values)


_HINT = "set data.prompt_field / data.response_field"


def _read_jsonl(path: Path, fields: tuple[str, str]) -> list[Example]:
    return [_example(f"{path}:{lineno}", record, fields, _HINT) for lineno, record in jsonl_records(path)]


def _columns(path: Path, names: list[str], fields: tuple[str, str], read: Callable[[], dict]) -> list[Example]:
    """Rows of a columnar file; a missing column is one error for the file, not one per row."""
    missing = [f for f in fields if f not in names]
    if missing:
        raise DistillError(f"{path}: no column {missing[0]!r} ({_HINT}; columns: {names})")
    cols = read()
    rows = zip(cols[fields[0]], cols[fields[1]])
    return [_example(f"{path} row {i}", dict(zip(fields, r)), fields, _HINT) for i, r in enumerate(rows)]


def _read_parquet(path: Path, fields: tuple[str, str]) -> list[Example]:
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception as e:  # pyarrow raises its own types for corrupt files
        raise DistillError(f"{path}: cannot read Parquet ({type(e).__name__}: {e})") from e
    return _columns(path, names, fields, lambda: pq.read_table(path, columns=list(fields)).to_pydict())


def _read_saved_dataset(path: Path, fields: tuple[str, str]) -> list[Example]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    return _columns(path, ds.column_names, fields, lambda: ds.select_columns(list(fields)).to_dict())


# -- split and rows -----------------------------------------------------------------------------------------


def split_examples(examples: list[Example], val_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Seeded split by prompt text, so a prompt asked twice is never in both splits."""
    prompts = sorted({e.prompt for e in examples})
    if len(prompts) < 2:
        raise DistillError(f"the data has {len(prompts)} distinct prompt(s); at least 2 are needed to split")
    _, val = split_documents([Document(p, "") for p in prompts], val_fraction, seed)
    val_prompts = {d.id for d in val}
    return [e for e in examples if e.prompt not in val_prompts], [e for e in examples if e.prompt in val_prompts]


def check_template(template: str) -> str:
    """Fail at config time, not mid-tokenization, on a template that cannot format a prompt."""
    try:
        probe = template.format(prompt="\0")
    except (KeyError, IndexError, ValueError) as e:
        raise DistillError(
            f"data.template {template!r} is not a format string whose only field is {{prompt}} "
            f"({type(e).__name__}: {e}; write literal braces as {{{{ }}}})"
        ) from None
    if "\0" not in probe:
        raise DistillError(f"data.template {template!r} does not contain {{prompt}}")
    return template


def build_rows(
    prompts: list[list[int]],
    responses: list[list[int]],
    *,
    seq_len: int,
    eos_id: int,
    pad_id: int,
    bos_id: int | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Token rows ``[n, seq_len + 1]`` and their next-token targets ``[n, seq_len]``.

    ``targets[i, j]`` is the token at ``j + 1`` when that token belongs to the response or is
    the closing EOS, else -100. Rows without any target are skipped (counted in the stats)."""
    width = seq_len + 1
    rows, targets = [], []
    stats = {"examples": len(prompts), "kept": 0, "skipped": 0, "truncated": 0}
    for p, r in zip(prompts, responses):
        head = ([bos_id] if bos_id is not None else []) + list(p)
        ids = (head + list(r) + [eos_id])[:width]
        labels = np.full(width, IGNORE_INDEX, dtype=np.int64)
        labels[len(head) : len(ids)] = ids[len(head) :]
        if not (labels[1:] != IGNORE_INDEX).any():
            stats["skipped"] += 1
            continue
        stats["truncated"] += len(head) + len(r) + 1 > width
        rows.append(ids + [pad_id] * (width - len(ids)))
        targets.append(labels[1:])
    stats["kept"] = len(rows)
    rows_arr = np.asarray(rows, dtype=np.int64).reshape(-1, width)
    return rows_arr, np.asarray(targets, dtype=np.int64).reshape(-1, seq_len), stats


# -- serving ------------------------------------------------------------------------------------------------


class MaskedBlockDataset(Dataset):
    """Rows of ``blocks [n, L + 1]`` with explicit targets ``[n, L]`` (-100 = ignored), as
    (inputs, targets, row index): the BlockDataset contract, for data that is not plain text."""

    def __init__(self, blocks: np.ndarray, targets: np.ndarray):
        if blocks.shape[0] != targets.shape[0] or blocks.shape[1] != targets.shape[1] + 1:
            raise ValueError(f"blocks {blocks.shape} and targets {targets.shape} do not match")
        self.blocks = torch.from_numpy(blocks.astype(np.int64))
        self.targets = torch.from_numpy(targets.astype(np.int64))

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.blocks[i, :-1], self.targets[i], i


class PromptResponseDataModule(TextDataModule):
    """TextDataModule's interface over prompt/response examples; the loss sees response tokens only.

    ``train_blocks``/``val_blocks`` are the token rows ``[n, seq_len + 1]`` (one example each),
    ``train_targets``/``val_targets`` their masked targets ``[n, seq_len]``."""

    def __init__(self, source: Callable[[], list[Example]], template: str = DEFAULT_TEMPLATE, **kwargs):
        super().__init__(source=source, **kwargs)
        if self.filters:  # at config time, before any teacher or data work
            raise DistillError(
                "data/filters work on text corpora (data=stdlib or data=files), "
                "not on prompt/response examples: use data/filters=none"
            )
        self.template = check_template(template)
        self.train_examples: list[Example] = []
        self.val_examples: list[Example] = []
        self.train_targets = self.val_targets = None
        self.stats: dict = {}

    def load_documents(self) -> None:
        examples = self.source()
        if not examples:
            raise DistillError("the prompt/response data is empty: no records were found in data.paths")
        self.train_examples, self.val_examples = split_examples(examples, self.val_fraction, self.seed)
        self.data_key = fingerprint(
            "prompt-response",
            *(
                text_fingerprint([t for e in split for t in (e.prompt, e.response)])
                for split in (self.train_examples, self.val_examples)
            ),
        )

    def _prompt_texts(self, examples: list[Example]) -> list[str]:
        return [self.template.format(prompt=e.prompt) for e in examples]

    def train_tokenizer(self) -> Path:
        """Byte-level BPE on the train split's formatted prompts and responses."""
        key = fingerprint("bpe-pr-v1", self.data_key, self.template, self.vocab_size)
        texts = self._prompt_texts(self.train_examples) + [e.response for e in self.train_examples]
        return cached_dir(self.cache_dir, "tokenizers", key, lambda tmp: train_bpe(texts, self.vocab_size, tmp))

    def _special_ids(self) -> tuple[int, int, int | None]:
        tok = self.tokenizer
        eos = tok.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        bos = tok.bos_token_id if tok.bos_token_id not in (None, eos) else None
        return eos, pad, bos

    def setup(self, stage: str | None = None) -> None:
        if self.train_blocks is not None:
            return
        key = fingerprint(
            "prompt-response-v1", self.data_key, self.tokenizer_key, self._special_ids(), self.seq_len, self.template
        )
        path = cached_dir(self.cache_dir, "prompt_response", key, self._build)
        self.stats = json.loads((path / "stats.json").read_text())
        self.train_blocks, self.train_targets = np.load(path / "train.npy"), np.load(path / "train_targets.npy")
        self.val_blocks = np.load(path / "val.npy")[: self.max_val_blocks]
        self.val_targets = np.load(path / "val_targets.npy")[: self.max_val_blocks]
        self._log_stats()
        if len(self.train_blocks) < self.batch_size or len(self.val_blocks) < 1:
            raise DistillError(
                f"too few usable examples: {len(self.train_blocks)} train / {len(self.val_blocks)} validation for "
                f"batch size {self.batch_size} ({self.stats['train']['skipped'] + self.stats['val']['skipped']} "
                f"skipped because the prompt fills data.seq_len={self.seq_len}; raise it or add data)"
            )

    def _build(self, tmp: Path) -> None:
        eos, pad, bos = self._special_ids()
        stats = {}
        for name, examples in (("train", self.train_examples), ("val", self.val_examples)):
            prompts = _encode(self.tokenizer, self._prompt_texts(examples))
            responses = _encode(self.tokenizer, [e.response for e in examples])
            rows, targets, stats[name] = build_rows(
                prompts, responses, seq_len=self.seq_len, eos_id=eos, pad_id=pad, bos_id=bos
            )
            dtype = np.int32 if len(self.tokenizer) < 2**31 else np.int64
            np.save(tmp / f"{name}.npy", rows.astype(dtype))
            np.save(tmp / f"{name}_targets.npy", targets.astype(dtype))
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2))

    def _log_stats(self) -> None:
        for name, s in self.stats.items():
            log.info(
                "%s: %d of %d examples kept (%d responses truncated to data.seq_len=%d)",
                name,
                s["kept"],
                s["examples"],
                s["truncated"],
                self.seq_len,
            )
            if s["skipped"]:
                log.warning(
                    "%s: skipped %d example(s) whose prompt fills data.seq_len=%d, leaving no response token",
                    name,
                    s["skipped"],
                    self.seq_len,
                )

    def train_dataloader(self) -> DataLoader:
        return train_loader(
            MaskedBlockDataset(self.train_blocks, self.train_targets),
            self.batch_size,
            self.seed,
            self.num_workers,
            **data_shard(self.trainer),
        )

    def val_dataloader(self) -> DataLoader:
        return eval_loader(
            MaskedBlockDataset(self.val_blocks, self.val_targets), self.batch_size, self.seed, self.num_workers
        )


def _encode(tokenizer, texts: list[str], batch_size: int = 256) -> list[list[int]]:
    out: list[list[int]] = []
    for start in range(0, len(texts), batch_size):
        out.extend(tokenizer(texts[start : start + batch_size], add_special_tokens=False)["input_ids"])
    return out


def from_prompt_response_files(
    paths: list[str],
    prompt_field: str = "prompt",
    response_field: str = "response",
    template: str = DEFAULT_TEMPLATE,
    max_docs: int | None = None,
    **kwargs,
) -> PromptResponseDataModule:
    """Hydra factory (``configs/data/prompt_response.yaml``); ``max_docs`` (the first N examples)
    keeps the name the other data configs use, so experiments that set it apply here too."""
    paths = list(paths) if paths is not None else []
    return PromptResponseDataModule(
        source=lambda: prompt_response_examples(paths, prompt_field, response_field, max_docs),
        template=template,
        **kwargs,
    )
