"""Where documents come from: the embedded stdlib corpus or the user's own files.

A source yields ``Document``s (an id and its text). The id is what the train/validation split is
keyed on, so one file (or one record) never lands in both.

Bad input never crashes a run: an undecodable file, an empty document, a malformed JSONL line, a
line too large to hold, a record without the text field, an unreadable Parquet file - each is
skipped and counted under its reason in a ``Skips`` (with the first place it happened). Only
when nothing valid remains is it one clear error, naming the reasons. Configuration mistakes (a
pattern that matches nothing, a directory that is not a dataset) are still errors at once.
"""

from __future__ import annotations

import ast
import glob
import json
import os
import sysconfig
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from distill.errors import DistillError

# Test suites are excluded: they are repetitive and not what a code model should learn from.
_STDLIB_SKIP_PARTS = {"site-packages", "test", "tests", "idle_test"}
# A single document (or JSONL line) beyond this is skipped, never read whole into memory.
MAX_DOC_BYTES = 16 * 2**20


@dataclass(frozen=True)
class Document:
    id: str
    text: str


class Skips(Counter):
    """Skipped inputs by reason, with where each reason was first seen (for the message)."""

    def __init__(self):
        super().__init__()
        self.first: dict[str, str] = {}

    def add(self, reason: str, where: str, n: int = 1) -> None:
        self[reason] += n
        self.first.setdefault(reason, where)

    def summary(self) -> str:
        return ", ".join(f"{reason}: {n} (first at {self.first[reason]})" for reason, n in self.most_common())


def require_documents(docs: list[Document], skips: Skips, what: str) -> list[Document]:
    if not docs:
        detail = f": {sum(skips.values())} input(s) skipped - {skips.summary()}" if skips else ""
        raise DistillError(f"the corpus is empty: no valid documents in {what}{detail}")
    return docs


def stdlib_documents(max_docs: int | None = None, skips: Skips | None = None) -> list[Document]:
    """The Python standard library that ships with this interpreter, one document per .py file."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skips = skips if skips is not None else Skips()
    docs = []
    for path in _stdlib_files(root):
        if max_docs is not None and len(docs) >= max_docs:
            break
        text = _read_text(path, skips)
        if text is not None:
            docs.append(Document(str(path.relative_to(root)), text))
    return docs


def docstring_documents(max_docs: int | None = None, min_chars: int = 20, skips: Skips | None = None) -> list[Document]:
    """The natural-language text of the embedded corpus: every docstring of the standard library
    (modules, classes, functions; read with ``ast``, so nothing is imported or run) and every topic
    of ``pydoc_data.topics`` (the language reference that ``help()`` shows).

    One document per docstring, id ``<file>::<qualified name>`` (``pydoc:<topic>`` for topics), so
    a split keyed on the part before ``::`` keeps each file (and each topic) on one side.
    ``max_docs`` limits the stdlib files read (sorted by path); docstrings shorter than
    ``min_chars`` are dropped (``"Return self."`` says nothing about a sentence encoder).
    """
    skips = skips if skips is not None else Skips()
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in _stdlib_files(root)[:max_docs]:
        source = _read_text(path, skips)
        if source is None:
            continue
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):  # a stdlib file for another Python version (lib2to3 fixtures...)
            skips.add("unparsable", str(path))
            continue
        rel = path.relative_to(root)
        docs += [Document(f"{rel}::{name}", text) for name, text in _docstrings(tree) if len(text) >= min_chars]
    from pydoc_data.topics import topics

    docs += [
        Document(f"pydoc:{name}", text.strip())
        for name, text in sorted(topics.items())
        if len(text.strip()) >= min_chars
    ]
    return require_documents(docs, skips, "the standard library's docstrings")


def _docstrings(tree: ast.Module) -> Iterator[tuple[str, str]]:
    """``(qualified name, cleaned docstring)`` of the module and every class and function in it."""
    kinds = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)

    def walk(node, prefix: str):
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, kinds):  # defs under if/try blocks count too
                yield from walk(child, prefix)
                continue
            name = f"{prefix}{child.name}"
            text = ast.get_docstring(child)
            if text:
                yield name, text
            yield from walk(child, name + ".")

    text = ast.get_docstring(tree)
    if text:
        yield "<module>", text
    yield from walk(tree, "")


def _stdlib_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if not _STDLIB_SKIP_PARTS & set(p.relative_to(root).parts))


def file_documents(
    paths: list[str], text_field: str = "text", max_docs: int | None = None, skips: Skips | None = None
) -> list[Document]:
    """Documents from local text (.txt/.md/.py...), JSONL, Parquet files or a ``save_to_disk`` dataset."""
    skips = skips if skips is not None else Skips()
    docs = list(islice(iter_file_documents(paths, text_field, skips), max_docs))
    return require_documents(docs, skips, "data.paths")


def iter_file_documents(paths: list[str], text_field: str, skips: Skips) -> Iterator[Document]:
    """Stream documents file by file (a corpus larger than memory never has to be held)."""
    if isinstance(paths, str):
        paths = [paths]
    if not paths:
        raise DistillError("data.paths is empty: give at least one file, glob or dataset directory")
    seen: set[str] = set()  # a file matched by two patterns is read once, so it cannot land in both splits
    for pattern in paths:
        matches = sorted(glob.glob(str(Path(pattern).expanduser()), recursive=True))
        if not matches:
            raise DistillError(f"data.paths: nothing matches {pattern!r}")
        for match in matches:
            if os.path.realpath(match) not in seen:
                seen.add(os.path.realpath(match))
                yield from _read_path(Path(match), text_field, skips)


def _read_path(path: Path, text_field: str, skips: Skips) -> Iterator[Document]:
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            yield from _read_saved_dataset(path, text_field, skips)
            return
        raise DistillError(f"data.paths: {path} is a directory but not a datasets.save_to_disk dataset")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        yield from _read_jsonl(path, text_field, skips)
    elif suffix == ".parquet":
        yield from _records(path, _parquet_column(path, text_field, skips), skips)
    else:
        text = _read_text(path, skips)
        if text is not None:
            yield Document(str(path), text)


def _read_text(path: Path, skips: Skips) -> str | None:
    if path.stat().st_size > MAX_DOC_BYTES:
        skips.add("too_large", str(path))
        return None
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        skips.add("undecodable", str(path))
        return None
    if not text.strip():
        skips.add("empty", str(path))
        return None
    return text


def _records(path: Path, texts: list, skips: Skips) -> Iterator[Document]:
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            skips.add("missing_field", f"{path}#{i}")
        elif not t.strip():
            skips.add("empty", f"{path}#{i}")
        else:
            yield Document(f"{path}#{i}", t)


def _lines(path: Path, skips: Skips) -> Iterator[tuple[int, str | None]]:
    """``(line number, text)`` per line; a line over MAX_DOC_BYTES or with bytes that are not
    UTF-8 is counted and comes as None (read in bounded pieces, so a huge line never fills memory)."""
    with path.open("rb") as f:
        lineno = 0
        while True:
            raw = f.readline(MAX_DOC_BYTES + 1)
            if not raw:
                return
            lineno += 1
            if len(raw) > MAX_DOC_BYTES and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # drain the rest of the huge line
                    raw = f.readline(MAX_DOC_BYTES)
                skips.add("too_large", f"{path}:{lineno}")
                yield lineno, None
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                skips.add("undecodable", f"{path}:{lineno}")
                text = None
            yield lineno, text


def jsonl_records(path: Path):
    """``(line number, object)`` per non-empty line of a JSON Lines file; a line that is not a JSON
    object is one clear error naming the file and line (for data where every record matters)."""
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


def _read_jsonl(path: Path, text_field: str, skips: Skips) -> Iterator[Document]:
    index = -1  # records are numbered among the non-blank lines (ids stay stable when bad lines go)
    for lineno, line in _lines(path, skips):
        if line is not None and not line.strip():
            continue
        index += 1
        if line is None:
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            skips.add("malformed_json", where)
            continue
        if not isinstance(record, dict):
            skips.add("malformed_json", where)
        elif not isinstance(record.get(text_field), str):
            skips.add(f"missing_field {text_field!r} (set data.text_field)", where)
        elif not record[text_field].strip():
            skips.add("empty", where)
        else:
            yield Document(f"{path}#{index}", record[text_field])


def _parquet_column(path: Path, text_field: str, skips: Skips) -> list:
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        if text_field not in names:
            skips.add(f"missing_field {text_field!r} (set data.text_field; columns: {names})", str(path))
            return []
        return pq.read_table(path, columns=[text_field]).column(text_field).to_pylist()
    except Exception as e:  # pyarrow raises its own types for corrupt files
        skips.add(f"unreadable_file ({type(e).__name__})", str(path))
        return []


def _read_saved_dataset(path: Path, text_field: str, skips: Skips) -> Iterator[Document]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    if text_field not in ds.column_names:
        raise DistillError(f"{path}: dataset has no column {text_field!r} (columns: {ds.column_names})")
    yield from _records(path, ds[text_field], skips)
