"""filter_documents: stages in a row, their stats, the cache, exclusions, resuming, bad settings (on the
local executor; data.executor=slurm: test_slurm_executor.py)."""

from __future__ import annotations

import base64
import gzip
import json
import logging
import random
import sysconfig
from pathlib import Path

import pytest

from distill.data.filters import runner
from distill.data.filters.code import CodeQualityFilter, code_stage
from distill.data.filters.runner import ExecutorSpec, Plan
from distill.data.filters.scoring import TeacherPerplexity
from distill.data.sources import Document
from distill.data.tokenizer import train_bpe
from distill.errors import DistillError
from tests.data.filters.helpers import CORPUS, KEPT, SHORT_A, SHORT_B, run, stages

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def untouchable():
    """A corpus that fails the test if the runner reads it (it should use what it already has)."""
    raise AssertionError("the input corpus was read again")
    yield  # unreachable: makes this a generator


def read_rows(folder: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(folder.glob("*.jsonl.gz")) for line in gzip.open(p, "rt")]


def test_two_stages_chain_and_count_reasons(tmp_path):
    result = run(tmp_path, source_skipped={"binary": 2, "decode_error": 1})
    s = result.stats
    assert s["stages"] == {
        "code": {"input": 7, "kept": 5, "dropped": {"max_line_length": 2}},
        "exact_dedup": {"input": 5, "kept": 3, "dropped": {"exact_duplicate": 2}},
    }
    assert (
        s["stages"]["exact_dedup"]["input"] == s["stages"]["code"]["kept"]
    )  # the second stage sees only what the first kept
    assert (s["input"], s["kept"], s["dropped"]) == (7, 3, 4) and s["kept_fraction"] == pytest.approx(3 / 7)
    assert (s["source_skipped"], s["executor"], s["tasks"]) == ({"binary": 2, "decode_error": 1}, "local", 2)
    assert json.loads((result.docs_dir.parent / "filter_stats.json").read_text()) == s
    assert {d.id: d.text for d in result.documents()} == KEPT
    assert len(list(result.documents())) == len(KEPT)


def test_second_call_reuses_the_cached_result(tmp_path, monkeypatch, caplog):
    first = run(tmp_path)

    def no_rerun(*args, **kwargs):
        raise AssertionError("the filters ran again")

    monkeypatch.setattr(Plan, "run_stages", no_rerun)
    with caplog.at_level(logging.INFO, logger="distill.data.filters.runner"):
        second = run(tmp_path, docs=untouchable())
    assert second.key == first.key and second.stats == first.stats
    assert {d.id: d.text for d in second.documents()} == KEPT
    assert f"filtered data: cached {tmp_path / 'filtered' / first.key}" in caplog.text
    assert not (tmp_path / "filtered" / f"{first.key}.work").exists()


def test_the_key_follows_every_setting(tmp_path):
    base = run(tmp_path).key
    assert run(tmp_path, stages=stages(max_line_length=300)).key != base
    assert run(tmp_path, input_key="corpus-v2").key != base
    assert run(tmp_path, keep_excluded=True).key != base
    assert run(tmp_path, stages={"code": code_stage(max_line_length=100)}).key != base
    assert run(tmp_path).key == base


def capture_key(monkeypatch) -> list[str]:
    """Keys of the calls that get as far as running stages (which then stop)."""
    keys = []

    def stop(self, *args):
        keys.append(self.work.name.removesuffix(".work"))
        raise KeyboardInterrupt

    monkeypatch.setattr(Plan, "run_stages", stop)
    return keys


def test_teacher_is_in_the_key_only_where_a_stage_scores_with_it(tmp_path, monkeypatch):
    """distill-filter (no teacher for heuristic filters) and distill-train (always a teacher) must
    share the cached result of [code, dedup]; a teacher_ppl result depends on the teacher."""
    keys = capture_key(monkeypatch)
    for st in (stages, lambda: {"teacher_ppl": TeacherPerplexity()}):
        for teacher in (None, "/teachers/one", "/teachers/two"):
            with pytest.raises(KeyboardInterrupt):
                run(tmp_path, stages=st(), teacher_path=teacher)
    heuristic, scored = keys[:3], keys[3:]
    assert len(set(heuristic)) == 1
    assert len(set(scored)) == 3


def test_keep_excluded_writes_dropped_documents_with_their_reason(tmp_path):
    result = run(tmp_path, keep_excluded=True)
    excluded = result.docs_dir.parent / "excluded"
    assert sorted(p.name for p in excluded.iterdir()) == ["code", "exact_dedup"]
    reasons = {
        stage: {r["id"]: r["metadata"]["filter_reason"] for r in read_rows(excluded / stage)}
        for stage in ("code", "exact_dedup")
    }
    assert reasons == {
        "code": {"long": "max_line_length", "long-copy": "max_line_length"},
        "exact_dedup": {"a-copy": "exact_duplicate", "b-copy": "exact_duplicate"},
    }
    assert {r["text"] for r in read_rows(excluded / "exact_dedup")} == {SHORT_A, SHORT_B}
    assert not (run(tmp_path).docs_dir.parent / "excluded").exists()  # not asked for: none kept


def test_everything_dropped_gives_an_empty_result(tmp_path):
    result = run(tmp_path, stages=stages(max_line_length=1))  # the dedup stage after it gets no documents
    assert (result.stats["input"], result.stats["kept"], result.stats["kept_fraction"]) == (7, 0, 0.0)
    assert result.stats["stages"]["code"] == {"input": 7, "kept": 0, "dropped": {"max_line_length": 7}}
    assert result.stats["stages"]["exact_dedup"] == {"input": 0, "kept": 0, "dropped": {}}
    assert result.docs_dir.is_dir() and list(result.documents()) == []


def test_an_interrupted_run_resumes_without_redoing_finished_shards(tmp_path, monkeypatch):
    fresh = run(tmp_path / "fresh")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # after every pass, before the result is published

    with monkeypatch.context() as m:
        m.setattr(runner, "publish", killed)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path)
    work = tmp_path / "filtered" / f"{fresh.key}.work"
    last = sorted(p.name for p in (work / "logs").glob("pass*"))[-1]
    (work / "logs" / last / "completions" / "00001").unlink()  # shard 1 of the last pass never finished
    for leftover in (work / last).glob("00001*"):
        leftover.write_bytes(b"half a file")

    seen = []
    real_filter = CodeQualityFilter.filter
    monkeypatch.setattr(CodeQualityFilter, "filter", lambda self, doc: seen.append(doc.id) or real_filter(self, doc))
    resumed = run(tmp_path, docs=untouchable())  # the materialised input is reused
    assert seen == []  # the code stage's pass had finished: none of its shards ran again
    assert resumed.key == fresh.key and resumed.stats == fresh.stats
    assert {d.id: d.text for d in resumed.documents()} == KEPT
    assert not work.exists()


def test_a_half_written_input_is_written_again(tmp_path):
    key = run(tmp_path / "fresh").key
    partial = tmp_path / "filtered" / f"{key}.work" / "input"  # killed while materialising: no input.done
    partial.mkdir(parents=True)
    with gzip.open(partial / "00000.jsonl.gz", "wt") as f:
        f.write(json.dumps({"id": "stray", "text": "stray = 1\n"}) + "\n")
    result = run(tmp_path)
    assert result.stats["input"] == len(CORPUS)
    assert {d.id: d.text for d in result.documents()} == KEPT


@pytest.mark.parametrize("kwargs", [{"kind": "bogus"}, {"tasks": 0}, {"tasks": -3}])
def test_bad_executor_settings_are_user_errors(kwargs):
    with pytest.raises(DistillError, match="data.executor|data.filter_tasks"):
        ExecutorSpec(**kwargs)


def test_no_documents_is_a_user_error(tmp_path):
    with pytest.raises(DistillError, match="no documents to filter"):
        run(tmp_path, docs=[])


def test_the_runs_tokenizer_reaches_the_code_filter(tmp_path):
    """The chars/token rule needs the run's tokenizer; the runner hands it to the stage's blocks."""
    tok = tmp_path / "tok"
    train_bpe(
        [(STDLIB / n).read_text() for n in ("textwrap.py", "glob.py", "bisect.py", "heapq.py")],
        vocab_size=600,
        out_dir=tok,
    )
    blob = base64.b64encode(random.Random(0).randbytes(3000)).decode()
    payload = 'DATA = """\n' + "\n".join(blob[i : i + 76] for i in range(0, len(blob), 76)) + '\n"""\n'
    docs = [Document("payload", payload), Document("glob", (STDLIB / "glob.py").read_text())]
    code = {"code": code_stage()}
    without = run(tmp_path, docs=docs, stages=code)
    assert without.stats["stages"]["code"]["dropped"] == {}
    result = run(tmp_path, docs=docs, stages={"code": code_stage()}, tokenizer_path=str(tok))
    assert result.stats["stages"]["code"]["dropped"] == {"chars_per_token": 1}
    assert [d.id for d in result.documents()] == ["glob"]
