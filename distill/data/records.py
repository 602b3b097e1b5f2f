"""Records (JSON objects) from the user's files, for data whose rows are structured, not text.

JSONL, Parquet, ``datasets.save_to_disk`` directories and globs, as ``data=files`` reads them. A
record is ``(where, dict)``, ``where`` naming the file and line (or row) for error messages. Files
that cannot be read, and lines that are not JSON objects, are one clear error: for structured
data a broken record nearly always means a broken export, and skipping it could drop most rows.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from pathlib import Path

from distill.data.sources import jsonl_records
from distill.errors import DistillError


def read_records(paths: list[str] | str, max_records: int | None = None) -> Iterator[tuple[str, dict]]:
    """``(where, record)`` from every file matched by ``paths`` (each file once), in sorted order."""
    paths = [paths] if isinstance(paths, str) else list(paths or [])
    if not paths:
        raise DistillError("data.paths is empty: give at least one JSONL / Parquet file or dataset directory")
    seen: set[str] = set()  # a file matched by two patterns is read once
    n = 0
    for pattern in paths:
        matches = sorted(glob.glob(str(Path(pattern).expanduser()), recursive=True))
        if not matches:
            raise DistillError(f"data.paths: nothing matches {pattern!r}")
        for match in matches:
            if os.path.realpath(match) in seen:
                continue
            seen.add(os.path.realpath(match))
            for item in _read_path(Path(match)):
                if max_records is not None and n >= max_records:
                    return
                n += 1
                yield item


def _read_path(path: Path) -> Iterator[tuple[str, dict]]:
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return _read_saved_dataset(path)
        raise DistillError(f"data.paths: {path} is a directory but not a datasets.save_to_disk dataset")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return ((f"{path}:{lineno}", record) for lineno, record in jsonl_records(path))
    if suffix == ".parquet":
        return _read_parquet(path)
    raise DistillError(f"{path}: records must be JSONL, Parquet or a save_to_disk dataset")


def _read_parquet(path: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises its own types for corrupt files
        raise DistillError(f"{path}: cannot read Parquet ({type(e).__name__}: {e})") from e
    return ((f"{path} row {i}", row) for i, row in enumerate(rows))


def _read_saved_dataset(path: Path) -> Iterator[tuple[str, dict]]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    return ((f"{path} row {i}", row) for i, row in enumerate(ds))
