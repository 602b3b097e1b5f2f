"""Data filters through the CLI: distill-filter, distill-train data/filters=[...], and their errors."""

import json

import pytest

from tests.cli.helpers import qa_file
from tests.conftest import run_cli

pytestmark = pytest.mark.cli

# teacher=none and a tiny scratch student: for runs that must fail before any training
NO_TEACHER = [
    "teacher=none",
    "student=scratch",
    "student.num_layers=1",
    "student.hidden_size=32",
    "student.num_heads=2",
]


def last_line(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def assert_one_line_error(proc, prog: str, message: str) -> None:
    assert proc.returncode != 0
    assert last_line(proc).startswith(f"{prog}: error:") and message in last_line(proc), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def filter_run(cache_dir, tmp_path_factory):
    """``distill-filter experiment=smoke data/filters=[code,dedup]``, once for this module."""
    out = tmp_path_factory.mktemp("filter-run")
    proc = run_cli(
        ["experiment=smoke", "data/filters=[code,dedup]", f"hydra.run.dir={out}"], cache_dir, prog="distill-filter"
    )
    return proc, out


def test_distill_filter_prints_the_table_and_writes_stats(filter_run):
    proc, out = filter_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads((out / "filter_stats.json").read_text())
    assert list(stats["stages"]) == ["code", "exact_dedup", "minhash"]
    assert stats["input"] == 36 and 0 < stats["kept"] <= 36  # smoke: 40 files, 10% of them validation
    code, exact, minhash = stats["stages"].values()
    assert code["input"] == stats["input"] and exact["input"] == code["kept"] and minhash["input"] == exact["kept"]
    assert minhash["kept"] == stats["kept"]
    assert "data filters (training split)" in proc.stdout
    for name in ("code", "exact_dedup", "minhash", "total"):
        assert f"│ {name} " in proc.stdout


def test_distill_filter_again_uses_the_cache(filter_run, cache_dir, tmp_path):
    first, first_out = filter_run
    assert first.returncode == 0, first.stderr[-3000:]
    proc = run_cli(
        ["experiment=smoke", "data/filters=[code,dedup]", f"hydra.run.dir={tmp_path}"], cache_dir, prog="distill-filter"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = proc.stdout + proc.stderr
    assert "filtered data: cached" in logs and "preparing over the whole corpus" not in logs
    assert (tmp_path / "filter_stats.json").read_text() == (first_out / "filter_stats.json").read_text()


def test_distill_filter_without_filters_is_an_error(cache_dir, tmp_path):
    proc = run_cli(["experiment=smoke", f"hydra.run.dir={tmp_path}"], cache_dir, prog="distill-filter")
    assert_one_line_error(proc, "distill-filter", "no filters configured")
    assert not (tmp_path / "filter_stats.json").exists()


@pytest.mark.slow
def test_train_with_filters_reuses_distill_filter_and_reports(filter_run, cache_dir, tmp_path):
    """distill-filter's result is what the training run uses (cached), and the run reports it."""
    assert filter_run[0].returncode == 0
    proc = run_cli(
        ["experiment=smoke", "data/filters=[code,dedup]", "control=false", f"hydra.run.dir={tmp_path}"], cache_dir
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "filtered data: cached" in proc.stdout + proc.stderr
    stats = json.loads((tmp_path / "filter_stats.json").read_text())
    assert stats == json.loads((filter_run[1] / "filter_stats.json").read_text())
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["data.filter_kept_fraction"] == pytest.approx(stats["kept_fraction"])
    assert metrics["data.train_tokens_available"] > 0
    report = (tmp_path / "report.md").read_text()
    section = report.split("## Data filters (training split)", 1)[1]
    assert "| exact_dedup |" in section and "| minhash |" in section and "| **total** |" in section


@pytest.mark.slow
def test_teacher_perplexity_band_through_training(cache_dir, tmp_path):
    proc = run_cli(
        ["experiment=smoke", "data/filters=teacher_ppl", "control=false", f"hydra.run.dir={tmp_path}"], cache_dir
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    stage = json.loads((tmp_path / "filter_stats.json").read_text())["stages"]["teacher_ppl"]
    assert set(stage["dropped"]) == {"ppl_below_band", "ppl_above_band"}
    assert all(n > 0 for n in stage["dropped"].values())
    assert 0.6 < stage["kept"] / stage["input"] < 0.95  # the 10th..90th percentile band
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["data.filter_kept_fraction"] < 1 and metrics["student.val_ppl"] > 1


@pytest.mark.parametrize("prog", ["distill-train", "distill-filter"])
def test_prompt_response_data_refuses_filters(prog, cache_dir, tmp_path):
    data = qa_file(tmp_path / "qa.jsonl")
    proc = run_cli(
        [
            "experiment=smoke",
            *NO_TEACHER,
            "data=prompt_response",
            f"data.paths=[{data}]",
            "data.prompt_field=question",
            "data.response_field=answer",
            "data.seq_len=32",
            "data/filters=code",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cache_dir,
        prog=prog,
    )
    assert_one_line_error(proc, prog, "not on prompt/response examples")


def test_filters_that_drop_everything_stop_the_run(cache_dir, tmp_path):
    """The prose filters on source code: every file fails them."""
    proc = run_cli(["experiment=smoke", *NO_TEACHER, "data/filters=web", f"hydra.run.dir={tmp_path}"], cache_dir)
    assert_one_line_error(proc, "distill-train", "the filters dropped every training document (36 in)")
    assert not (tmp_path / "metrics.json").exists()


def test_distill_filter_reports_a_pipeline_that_drops_everything(cache_dir, tmp_path):
    """distill-filter still prints and saves the stats (which filter dropped what), then fails."""
    proc = run_cli(
        ["experiment=smoke", "data/filters=web", f"hydra.run.dir={tmp_path}"], cache_dir, prog="distill-filter"
    )
    assert_one_line_error(proc, "distill-filter", "the filters dropped every training document (36 in)")
    assert "gopher_below_alpha_threshold" in proc.stdout  # the table, before the error
    stats = json.loads((tmp_path / "filter_stats.json").read_text())
    assert stats["kept"] == 0 and stats["input"] == 36
    assert sum(stats["stages"]["web"]["dropped"].values()) == 36
