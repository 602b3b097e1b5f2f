"""filter_documents: stages in a row, their stats, the cache, exclusions, resuming, bad settings, and
data.executor=slurm with datatrove's real SLURM executor (sbatch replaced; a real cluster: tests/slurm/)."""

from __future__ import annotations

import base64
import gzip
import inspect
import json
import logging
import os
import random
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from distill.data.filters import runner
from distill.data.filters.code import CodeQualityFilter, code_stage
from distill.data.filters.dedup import ExactDedup
from distill.data.filters.runner import ExecutorSpec, Plan, filter_documents
from distill.data.filters.scoring import TeacherPerplexity
from distill.data.sources import Document
from distill.data.tokenizer import train_bpe
from distill.errors import DistillError

STDLIB = Path(sysconfig.get_paths()["stdlib"])
LOCAL = ExecutorSpec("local", tasks=2, workers=1)  # workers=1: ranks run in this process, one after another

SHORT_A, SHORT_B, SHORT_C = "x = 1\ny = 2\n", "def f():\n    return 3\n", "import os\nprint(os.sep)\n"
LONG = "z = [" + ", ".join(map(str, range(60))) + "]\n"  # one line of ~230 characters

# doc i goes to shard i % 2; dedup keeps the first copy in (shard, position) order, so each
# original sits in the same shard as its copy, before it.
CORPUS = [
    Document("a", SHORT_A),      # shard 0: kept
    Document("b", SHORT_B),      # shard 1: kept
    Document("a-copy", SHORT_A),  # shard 0: exact_duplicate of a
    Document("b-copy", SHORT_B),  # shard 1: exact_duplicate of b
    Document("long", LONG),      # shard 0: max_line_length
    Document("long-copy", LONG),  # shard 1: max_line_length (dedup never sees it)
    Document("c", SHORT_C),      # shard 0: kept
]
KEPT = {"a": SHORT_A, "b": SHORT_B, "c": SHORT_C}


def stages(max_line_length: int = 100) -> dict:
    return {"code": code_stage(max_line_length=max_line_length), "exact_dedup": ExactDedup()}


def run(cache: Path, docs=CORPUS, **kwargs):
    kwargs = {"input_key": "corpus-v1", "executor": LOCAL, "stages": stages(), **kwargs}
    return filter_documents(docs, kwargs.pop("stages"), cache_dir=cache, **kwargs)


def untouchable():
    """A corpus that fails the test if the runner reads it (it should use what it already has)."""
    raise AssertionError("the input corpus was read again")
    yield  # noqa: unreachable - makes this a generator


def read_rows(folder: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(folder.glob("*.jsonl.gz")) for line in gzip.open(p, "rt")]


def test_two_stages_chain_and_count_reasons(tmp_path):
    result = run(tmp_path, source_skipped={"binary": 2, "decode_error": 1})
    s = result.stats
    assert s["stages"] == {
        "code": {"input": 7, "kept": 5, "dropped": {"max_line_length": 2}},
        "exact_dedup": {"input": 5, "kept": 3, "dropped": {"exact_duplicate": 2}},
    }
    assert s["stages"]["exact_dedup"]["input"] == s["stages"]["code"]["kept"]  # the second stage sees only what the first kept
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
    reasons = {stage: {r["id"]: r["metadata"]["filter_reason"] for r in read_rows(excluded / stage)}
               for stage in ("code", "exact_dedup")}
    assert reasons == {"code": {"long": "max_line_length", "long-copy": "max_line_length"},
                       "exact_dedup": {"a-copy": "exact_duplicate", "b-copy": "exact_duplicate"}}
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


def test_slurm_without_a_partition_is_a_user_error(tmp_path):
    with pytest.raises(DistillError, match="data.slurm.partition"):
        run(tmp_path, executor=ExecutorSpec("slurm", tasks=2))


def test_no_documents_is_a_user_error(tmp_path):
    with pytest.raises(DistillError, match="no documents to filter"):
        run(tmp_path, docs=[])


def test_the_runs_tokenizer_reaches_the_code_filter(tmp_path):
    """The chars/token rule needs the run's tokenizer; the runner hands it to the stage's blocks."""
    tok = tmp_path / "tok"
    train_bpe([(STDLIB / n).read_text() for n in ("textwrap.py", "glob.py", "bisect.py", "heapq.py")],
              vocab_size=600, out_dir=tok)
    blob = base64.b64encode(random.Random(0).randbytes(3000)).decode()
    payload = 'DATA = """\n' + "\n".join(blob[i:i + 76] for i in range(0, len(blob), 76)) + '\n"""\n'
    docs = [Document("payload", payload), Document("glob", (STDLIB / "glob.py").read_text())]
    code = {"code": code_stage()}
    without = run(tmp_path, docs=docs, stages=code)
    assert without.stats["stages"]["code"]["dropped"] == {}
    result = run(tmp_path, docs=docs, stages={"code": code_stage()}, tokenizer_path=str(tok))
    assert result.stats["stages"]["code"]["dropped"] == {"chars_per_token": 1}
    assert [d.id for d in result.documents()] == ["glob"]


# -- data.executor=slurm, against datatrove's real SlurmPipelineExecutor -------------------------------------


def slurm_executor(tmp_path: Path, settings) -> runner.FilterPassExecutor:
    """The executor a pass would submit with these ``data.slurm`` settings (nothing is submitted)."""
    spec = ExecutorSpec("slurm", tasks=2, slurm=settings)
    return runner.FilterPassExecutor(pipeline=[], tasks=2, logging_dir=str(tmp_path / "logs"), job_name="pass0",
                                     **spec.slurm_kwargs)


def test_slurm_settings_reach_the_executor_keywords_or_sbatch(tmp_path):
    settings = OmegaConf.create({  # as Hydra hands them over
        "partition": "debug", "time": "00:10:00", "cpus-per-task": 1, "mem_per_cpu_gb": 3, "workers": 1,
        "account": "research", "qos": "high", "constraint": "a100", "gres": "gpu:1", "exclusive": True,
        "requeue": False, "reservation": None, "overcommit": False,
        "sbatch_args": {"gpu-bind": "closest", "account": "not-this-one"}})
    executor = slurm_executor(tmp_path, settings)
    assert (executor.partition, executor.time, executor.cpus_per_task, executor.mem_per_cpu_gb) == (
        "debug", "00:10:00", 1, 3)
    args = executor.get_sbatch_args(max_array=2)
    assert {k: args[k] for k in ("partition", "time", "cpus-per-task", "mem-per-cpu", "qos", "array")} == {
        "partition": "debug", "time": "00:10:00", "cpus-per-task": 1, "mem-per-cpu": "3G", "qos": "high",
        "array": "0-1%1"}
    # sbatch options datatrove has no keyword for: a named key wins over the same one in sbatch_args
    assert {k: args[k] for k in ("account", "constraint", "gres", "exclusive", "gpu-bind")} == {
        "account": "research", "constraint": "a100", "gres": "gpu:1", "exclusive": "", "gpu-bind": "closest"}
    assert not {"requeue", "reservation", "overcommit"} & args.keys()  # false flags and nulls are left out
    script = executor.get_launch_file_contents(args, "true")
    assert "#SBATCH --account=research\n" in script and "#SBATCH --exclusive\n" in script
    assert type(executor._sbatch_args) is dict  # plain containers: the executor is pickled into every job


def test_slurm_defaults_and_no_qos_unless_asked(tmp_path):
    """datatrove's default qos "normal" does not exist on every cluster: the cluster's own default applies."""
    args = slurm_executor(tmp_path, {"partition": "debug"}).get_sbatch_args()
    assert (args["time"], args["cpus-per-task"], args["mem-per-cpu"]) == ("04:00:00", 2, "2G")
    assert "qos" not in args and "account" not in args


def test_slurm_jobs_run_the_submitting_python_environment(tmp_path):
    """The jobs find datatrove's launcher in the venv that submitted them, even when it is not activated;
    an environment the user names replaces that."""
    script = slurm_executor(tmp_path, {"partition": "debug"}).get_launch_file_contents({}, "launch_pickled_pipeline")
    assert f"export PATH={Path(sys.executable).parent}:$PATH\n" in script
    venv = slurm_executor(tmp_path, {"partition": "debug", "venv_path": "/opt/env/bin/activate"})
    assert "source /opt/env/bin/activate" in venv.get_launch_file_contents({}, "x") and venv.env_command is None


@pytest.mark.parametrize(("key", "nearest"), [
    ("acount", "account"), ("partiton", "partition"), ("cpu_per_task", "cpus_per_task"),
    ("mem_per_cpu_g", "mem_per_cpu_gb"), ("reservaton", "reservation"), ("constraints", "constraint")])
def test_an_unknown_slurm_setting_is_one_line_naming_the_nearest(key, nearest):
    with pytest.raises(DistillError) as err:
        ExecutorSpec("slurm", slurm={"partition": "debug", key: "x"})
    message = str(err.value)
    assert message.startswith(f"data.slurm.{key} is neither a keyword of datatrove's SlurmPipelineExecutor")
    assert f"did you mean data.slurm.{nearest}?" in message and "\n" not in message


@pytest.mark.parametrize(("key", "instead"), [
    ("tasks", "data.filter_tasks"), ("mem", "data.slurm.mem_per_cpu_gb"), ("mem-per-cpu", "data.slurm.mem_per_cpu_gb"),
    ("nodes", "data.slurm.nodes_per_task"), ("output", "data.slurm.slurm_logs_folder"), ("array", None),
    ("job_name", None), ("dependency", None), ("logging_dir", None)])
def test_settings_the_runner_owns_are_refused(key, instead):
    with pytest.raises(DistillError, match=f"data.slurm.{key} is set by the filter runner") as err:
        ExecutorSpec("slurm", slurm={"partition": "debug", key: "x"})
    assert (f"set {instead} instead" in str(err.value)) == (instead is not None)


def test_unknown_slurm_settings_are_ignored_by_the_local_executor():
    assert ExecutorSpec("local", slurm={"acount": "x"}).slurm_kwargs == {}


def test_the_settings_follow_the_installed_datatrove(monkeypatch):
    """Keywords are read from the executor's signature: a new one needs no change here, and every one the
    runner owns must still exist (a rename in datatrove fails this test, not a user's cluster run)."""
    from datatrove.executor import SlurmPipelineExecutor

    params = inspect.signature(SlurmPipelineExecutor.__init__).parameters
    assert set(runner.RUNNER_KEYWORDS) <= set(params)
    assert set(runner.SLURM_DEFAULTS) <= set(params)
    assert inspect.signature(SlurmPipelineExecutor).bind(
        pipeline=[], logging_dir="logs", job_name="pass0", tasks=2, **runner.slurm_executor_kwargs({"partition": "p"}))

    class Upgraded(runner.FilterPassExecutor):
        def __init__(self, pipeline, tasks, time, partition, *, new_knob: int = 0, **kwargs):
            super().__init__(pipeline, tasks, time, partition, **kwargs)

    monkeypatch.setattr(runner, "FilterPassExecutor", Upgraded)
    kwargs = runner.slurm_executor_kwargs({"partition": "p", "new_knob": 3, "account": "a"})
    assert (kwargs["new_knob"], kwargs["partition"], kwargs["sbatch_args"]) == (3, "p", {"account": "a"})


@pytest.fixture
def in_process_slurm(tmp_path, monkeypatch) -> list[str]:
    """datatrove's real SLURM executor with sbatch replaced: the submitted script's array tasks run here,
    one after another, as ``launch_pickled_pipeline`` runs them on a node. Returns the submitted scripts."""
    import dill
    from datatrove.executor import slurm

    bin_dir = tmp_path / "bin"  # the runner first checks that this is a submit host
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    scripts: list[str] = []

    def sbatch(script: str, job_id_retriever, *args) -> str:
        scripts.append(script)
        last = int(re.search(r"^#SBATCH --array=0-(\d+)", script, re.MULTILINE).group(1))
        pickled = re.search(r"launch_pickled_pipeline (\S+)", script).group(1)
        for task in range(last + 1):
            monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(task))
            with open(pickled, "rb") as f:
                dill.load(f).run()
        monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
        return str(len(scripts))

    monkeypatch.setattr(slurm, "launch_slurm_job", sbatch)
    monkeypatch.setattr(slurm, "expand_slurm_nodelist", lambda nodelist: ["localhost"])
    monkeypatch.setenv("SLURM_NODELIST", "localhost")
    monkeypatch.setattr(runner, "slurm_job_queued", lambda job_id: False)  # each job has ended when submitted
    return scripts


def test_slurm_executor_gets_every_pass_and_waits_for_its_shards(tmp_path, in_process_slurm):
    """data.executor=slurm: each pass is one array job over the shards, submitted with the configured
    settings; the result equals a local run's (tests/slurm/test_filter_slurm.py: on a real cluster)."""
    spec = ExecutorSpec("slurm", tasks=2, slurm={"partition": "cpu", "time": "00:10:00", "account": "research"},
                        poll_s=0)
    result = run(tmp_path / "slurm", executor=spec)
    local = run(tmp_path / "local")
    assert {d.id: d.text for d in result.documents()} == KEPT
    assert result.stats["stages"] == local.stats["stages"] and result.stats["executor"] == "slurm"
    # the code filter's pass (dedup prepares on what it keeps), dedup's hashing pass, dedup's filter pass;
    # no stats-merging job (the runner sums the shards' stats itself)
    names = [re.search(r"^#SBATCH --job-name=(\S+)$", s, re.MULTILINE).group(1) for s in in_process_slurm]
    assert names == ["distill-filter-pass0", "distill-filter-exact_dedup.exact_dedup_hash_normalized",
                     "distill-filter-pass1"]
    for script in in_process_slurm:
        for line in ("--partition=cpu", "--time=00:10:00", "--account=research", "--array=0-1"):
            assert f"#SBATCH {line}\n" in script


def test_a_slurm_job_that_ends_with_shards_unfinished_is_an_error_not_a_hang(tmp_path, in_process_slurm,
                                                                              monkeypatch):
    from datatrove.executor import slurm

    cancelled = []
    monkeypatch.setattr(slurm, "launch_slurm_job", lambda *args: "41")  # queued, then gone without running
    monkeypatch.setattr(runner.subprocess, "run", lambda cmd, **kw: cancelled.append(cmd))
    spec = ExecutorSpec("slurm", tasks=2, slurm={"partition": "cpu"}, poll_s=0)
    with pytest.raises(DistillError, match=r"filter pass pass0: SLURM job 41 ended with 2 of 2 shards unfinished"):
        run(tmp_path, executor=spec)
    assert cancelled == [["scancel", "41"]]


def test_sbatch_refusing_a_pass_is_a_user_error(tmp_path, in_process_slurm, monkeypatch):
    from datatrove.executor import slurm

    def refuse(*args):
        raise subprocess.CalledProcessError(1, "sbatch")

    monkeypatch.setattr(slurm, "launch_slurm_job", refuse)
    with pytest.raises(DistillError, match="sbatch refused filter pass pass0 .*launch_script.slurm"):
        run(tmp_path, executor=ExecutorSpec("slurm", tasks=2, slurm={"partition": "nope"}))


def test_slurm_needs_a_submit_host(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DistillError, match="data.executor=slurm: sbatch is not on PATH"):
        run(tmp_path, executor=ExecutorSpec("slurm", tasks=2, slurm={"partition": "debug"}))
