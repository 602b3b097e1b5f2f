"""Where documents come from: the embedded stdlib corpus or the user's own files.

A source returns a list of ``Document``s (an id and its text). The id is what the
train/validation split is keyed on, so one file (or one record) never lands in both.
"""

from __future__ import annotations

import glob
import json
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from distill.errors import DistillError

# Test suites are excluded: they are repetitive and not what a code model should learn from.
_STDLIB_SKIP_PARTS = {"site-packages", "test", "tests", "idle_test"}


@dataclass(frozen=True)
class Document:
    id: str
    text: str


def stdlib_documents(max_docs: int | None = None) -> list[Document]:
    """The Python standard library that ships with this interpreter, one document per .py file."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not _STDLIB_SKIP_PARTS & set(p.relative_to(root).parts))
    docs = []
    for path in files:
        if max_docs is not None and len(docs) >= max_docs:
            break
        text = path.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            docs.append(Document(str(path.relative_to(root)), text))
    return docs


def file_documents(paths: list[str], text_field: str = "text", max_docs: int | None = None) -> list[Document]:
    """Documents from local text (.txt/.md/.py...), JSONL, Parquet files or a ``save_to_disk`` dataset."""
    if isinstance(paths, str):
        paths = [paths]
    if not paths:
        raise DistillError("data.paths is empty: give at least one file, glob or dataset directory")
    docs: list[Document] = []
    seen: set[str] = set()  # a file matched by two patterns is read once, so it cannot land in both splits
    for pattern in paths:
        matches = sorted(glob.glob(str(Path(pattern).expanduser()), recursive=True))
        if not matches:
            raise DistillError(f"data.paths: nothing matches {pattern!r}")
        for match in matches:
            if os.path.realpath(match) in seen:
                continue
            seen.add(os.path.realpath(match))
            docs.extend(_read_path(Path(match), text_field))
            if max_docs is not None and len(docs) >= max_docs:
                return docs[:max_docs]
    return docs


def _read_path(path: Path, text_field: str) -> list[Document]:
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return _read_saved_dataset(path, text_field)
        raise DistillError(f"data.paths: {path} is a directory but not a datasets.save_to_disk dataset")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path, text_field)
    if suffix == ".parquet":
        return _records(path, _parquet_column(path, text_field))
    text = path.read_text(encoding="utf-8", errors="replace")
    return [Document(str(path), text)] if text.strip() else []


def _records(path: Path, texts: list) -> list[Document]:
    return [Document(f"{path}#{i}", t) for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]


def jsonl_records(path: Path):
    """``(line number, object)`` per non-empty line of a JSON Lines file; a line that is not a JSON
    object is one clear error naming the file and line."""
    with path.open(encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DistillError(f"{path}:{lineno}: not valid JSON Lines, one object per line ({e.msg})") from None
            if not isinstance(record, dict):
                raise DistillError(f"{path}:{lineno}: not a JSON object")
            yield lineno, record


def _read_jsonl(path: Path, text_field: str) -> list[Document]:
    texts = []
    for lineno, record in jsonl_records(path):
        if text_field not in record:
            raise DistillError(f"{path}:{lineno}: record has no field {text_field!r} (set data.text_field)")
        texts.append(record[text_field])
    return _records(path, texts)


def _parquet_column(path: Path, text_field: str) -> list:
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        if text_field not in names:
            raise DistillError(f"{path}: no column {text_field!r} (set data.text_field; columns: {names})")
        return pq.read_table(path, columns=[text_field]).column(text_field).to_pylist()
    except DistillError:
        raise
    except Exception as e:  # pyarrow raises its own types for corrupt files
        raise DistillError(f"{path}: cannot read Parquet ({type(e).__name__}: {e})") from e


def _read_saved_dataset(path: Path, text_field: str) -> list[Document]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    if text_field not in ds.column_names:
        raise DistillError(f"{path}: dataset has no column {text_field!r} (columns: {ds.column_names})")
    return _records(path, ds[text_field])
