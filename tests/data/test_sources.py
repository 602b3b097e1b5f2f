"""Document sources: the embedded stdlib corpus and the user's own files."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest

from distill.data.sources import Document, Skips, file_documents, stdlib_documents
from distill.errors import DistillError

TEXTS = ["def f():\n    return 1\n", "class A:\n    pass\n", "print('hello world')\n"]


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _write_parquet(path: Path, columns: dict[str, list]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


# -- stdlib -------------------------------------------------------------------------------------------------


def test_stdlib_documents_are_nonempty_and_skip_test_suites():
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = stdlib_documents()
    assert len(docs) > 300  # ~800 .py files in a CPython stdlib
    assert all(isinstance(d, Document) and d.text.strip() for d in docs)
    ids = [d.id for d in docs]
    assert len(set(ids)) == len(ids)
    for d in docs:
        parts = set(Path(d.id).parts)
        assert not parts & {"test", "tests", "idle_test", "site-packages"}, d.id
        assert d.id.endswith(".py") and (root / d.id).is_file()
    assert "os.py" in ids
    # pydoc_data/topics.py is the prose part of the corpus
    assert str(Path("pydoc_data") / "topics.py") in ids


def test_stdlib_documents_max_docs():
    docs = stdlib_documents(max_docs=5)
    assert 1 <= len(docs) <= 5
    assert [d.id for d in docs] == [d.id for d in stdlib_documents(max_docs=5)]  # deterministic (sorted)
    assert [d.id for d in stdlib_documents(max_docs=10)][: len(docs)] == [d.id for d in docs]


# -- files --------------------------------------------------------------------------------------------------


def test_text_files_one_document_each(tmp_path):
    for i, text in enumerate(TEXTS):
        (tmp_path / f"doc{i}.txt").write_text(text)
    (tmp_path / "blank.txt").write_text("  \n\n")  # empty documents are dropped
    docs = file_documents([str(tmp_path / "*.txt")])
    assert sorted(d.text for d in docs) == sorted(TEXTS)
    assert len({d.id for d in docs}) == len(TEXTS)


def test_single_path_string_is_accepted(tmp_path):
    (tmp_path / "a.md").write_text("# title\nbody\n")
    docs = file_documents(str(tmp_path / "a.md"))
    assert [d.text for d in docs] == ["# title\nbody\n"]


def test_jsonl_records(tmp_path):
    path = _write_jsonl(tmp_path / "data.jsonl", [{"text": t, "meta": i} for i, t in enumerate(TEXTS)])
    with path.open("a") as f:
        f.write("\n")  # blank lines are skipped
        f.write(json.dumps({"text": "   "}) + "\n")  # whitespace-only records are dropped
    docs = file_documents([str(path)])
    assert [d.text for d in docs] == TEXTS
    assert len({d.id for d in docs}) == len(TEXTS)  # one document per record, distinct ids


def test_jsonl_custom_text_field(tmp_path):
    path = _write_jsonl(tmp_path / "data.jsonl", [{"content": t, "text": "wrong"} for t in TEXTS])
    assert [d.text for d in file_documents([str(path)], text_field="content")] == TEXTS
    assert [d.text for d in file_documents([str(path)])] == ["wrong"] * len(TEXTS)


def test_parquet_records_and_text_field(tmp_path):
    path = _write_parquet(tmp_path / "data.parquet", {"content": TEXTS, "n": list(range(len(TEXTS)))})
    docs = file_documents([str(path)], text_field="content")
    assert [d.text for d in docs] == TEXTS
    assert len({d.id for d in docs}) == len(TEXTS)


def test_saved_dataset_directory(tmp_path):
    import datasets

    ds_dir = tmp_path / "ds"
    datasets.Dataset.from_dict({"body": TEXTS, "label": [0, 1, 2]}).save_to_disk(str(ds_dir))
    docs = file_documents([str(ds_dir)], text_field="body")
    assert [d.text for d in docs] == TEXTS


def test_saved_dataset_dict_uses_train_split(tmp_path):
    import datasets

    ds_dir = tmp_path / "dsd"
    datasets.DatasetDict(
        {
            "validation": datasets.Dataset.from_dict({"text": ["val doc"]}),
            "train": datasets.Dataset.from_dict({"text": TEXTS}),
        }
    ).save_to_disk(str(ds_dir))
    assert [d.text for d in file_documents([str(ds_dir)])] == TEXTS


def test_globs_mixed_formats_and_max_docs(tmp_path):
    sub = tmp_path / "nested" / "deeper"
    sub.mkdir(parents=True)
    _write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in TEXTS])
    _write_jsonl(sub / "b.jsonl", [{"text": "nested " + t} for t in TEXTS])
    (tmp_path / "c.txt").write_text("plain text file")
    docs = file_documents([str(tmp_path / "**" / "*.jsonl"), str(tmp_path / "*.txt")])
    assert len(docs) == 2 * len(TEXTS) + 1
    assert {d.text for d in docs} == set(TEXTS) | {"nested " + t for t in TEXTS} | {"plain text file"}
    limited = file_documents([str(tmp_path / "**" / "*.jsonl"), str(tmp_path / "*.txt")], max_docs=4)
    assert len(limited) == 4
    assert [d.text for d in limited] == [d.text for d in docs[:4]]


def test_file_matched_by_two_patterns_is_read_once(tmp_path):
    from distill.data.split import split_documents

    path = _write_jsonl(tmp_path / "a.jsonl", [{"text": f"doc {i}"} for i in range(20)])
    docs = file_documents([str(tmp_path / "*.jsonl"), str(path)])
    train, val = split_documents(docs, 0.3, seed=0)
    assert not {d.id for d in train} & {d.id for d in val}
    assert len(docs) == 20


def test_max_docs_stops_within_a_file(tmp_path):
    path = _write_jsonl(tmp_path / "data.jsonl", [{"text": f"doc {i}"} for i in range(10)])
    assert [d.text for d in file_documents([str(path)], max_docs=3)] == ["doc 0", "doc 1", "doc 2"]


# -- errors -------------------------------------------------------------------------------------------------


def test_malformed_json_line_is_skipped_and_counted(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "ok"}) + "\n" + '{"text": "unterminated\n' + '["a list"]\n')
    skips = Skips()
    docs = file_documents([str(path)], skips=skips)
    assert [d.text for d in docs] == ["ok"]
    assert skips["malformed_json"] == 2 and skips.first["malformed_json"] == f"{path}:2"


def test_only_bad_lines_is_one_clear_error_naming_reason_and_place(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "unterminated\n')
    with pytest.raises(DistillError) as exc:
        file_documents([str(path)])
    msg = str(exc.value)
    assert "no valid documents" in msg and "malformed_json: 1" in msg and f"{path}:1" in msg


def test_jsonl_missing_text_field(tmp_path):
    path = _write_jsonl(tmp_path / "data.jsonl", [{"content": "x"}])
    with pytest.raises(DistillError) as exc:
        file_documents([str(path)])
    msg = str(exc.value)
    assert f"{path}:1" in msg and "'text'" in msg and "data.text_field" in msg


def test_every_kind_of_bad_record_is_skipped_and_counted(tmp_path, monkeypatch):
    import distill.data.sources as sources

    monkeypatch.setattr(sources, "MAX_DOC_BYTES", 1000)
    path = tmp_path / "mixed.jsonl"
    lines = [
        json.dumps({"text": "good one"}).encode(),
        json.dumps({"text": ""}).encode(),
        json.dumps({"body": "no text field"}).encode(),
        b'{"text": "bad bytes \xff\xfe"}',
        json.dumps({"text": "x" * 5000}).encode(),
        b"{not json",
        json.dumps({"text": "good two"}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00 not utf-8")
    (tmp_path / "blank.txt").write_text("   \n")
    skips = Skips()
    docs = file_documents([str(path), str(tmp_path / "*.txt")], skips=skips)
    assert [d.text for d in docs] == ["good one", "good two"]
    assert skips["empty"] == 2 and skips["undecodable"] == 2 and skips["too_large"] == 1
    assert skips["malformed_json"] == 1 and skips["missing_field 'text' (set data.text_field)"] == 1
    assert docs[1].id == f"{path}#6"  # ids count every non-blank line, so they do not shift


def test_parquet_missing_column(tmp_path):
    path = _write_parquet(tmp_path / "data.parquet", {"content": TEXTS})
    with pytest.raises(DistillError) as exc:
        file_documents([str(path)], text_field="text")
    msg = str(exc.value)
    assert str(path) in msg and "missing_field 'text'" in msg and "content" in msg


def test_corrupt_parquet_is_skipped_beside_good_files(tmp_path):
    (tmp_path / "corrupt.parquet").write_bytes(b"this is not parquet at all")
    _write_parquet(tmp_path / "good.parquet", {"text": TEXTS})
    skips = Skips()
    docs = file_documents([str(tmp_path / "*.parquet")], skips=skips)
    assert len(docs) == len([t for t in TEXTS if t.strip()])
    assert sum(n for reason, n in skips.items() if reason.startswith("unreadable_file")) == 1


def test_saved_dataset_missing_column(tmp_path):
    import datasets

    ds_dir = tmp_path / "ds"
    datasets.Dataset.from_dict({"body": TEXTS}).save_to_disk(str(ds_dir))
    with pytest.raises(DistillError, match=r"no column 'text'.*body"):
        file_documents([str(ds_dir)])


def test_plain_directory_is_rejected(tmp_path):
    (tmp_path / "somedir").mkdir()
    with pytest.raises(DistillError, match="not a datasets.save_to_disk dataset"):
        file_documents([str(tmp_path / "somedir")])


def test_glob_without_match(tmp_path):
    pattern = str(tmp_path / "nothing-*.jsonl")
    with pytest.raises(DistillError) as exc:
        file_documents([pattern])
    assert "nothing matches" in str(exc.value) and pattern in str(exc.value)


@pytest.mark.parametrize("paths", [[], None])
def test_empty_paths(paths):
    with pytest.raises(DistillError, match="data.paths is empty"):
        file_documents(paths)
