"""distill-cache + distill-train teacher=cache, end to end at smoke sizes."""

import json

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.cli

SMOKE = ["experiment=smoke", "control=false"]


@pytest.fixture(scope="module")
def teacher_cache(tmp_path_factory, cache_dir):
    where = tmp_path_factory.mktemp("teacher-cache") / "cache"
    run_dir = tmp_path_factory.mktemp("cache-run")
    proc = run_cli(
        [*SMOKE, f"teacher.cache_dir={where}", "teacher.shard_rows=64", f"hydra.run.dir={run_dir}"],
        cache_dir,
        prog="distill-cache",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return where


def test_cache_has_manifest_shards_and_teacher_numbers(teacher_cache):
    manifest = json.loads((teacher_cache / "manifest.json").read_text())
    assert manifest["top_k"] == 64 and manifest["extra"]["teacher.val_ppl"] > 1
    assert list((teacher_cache / "train").glob("shard-*.values.npy"))


def test_rerun_skips_finished_shards(teacher_cache, cache_dir, tmp_path):
    proc = run_cli(
        [*SMOKE, f"teacher.cache_dir={teacher_cache}", "teacher.shard_rows=64", f"hydra.run.dir={tmp_path}"],
        cache_dir,
        prog="distill-cache",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "0 written now" in proc.stdout + proc.stderr


def test_sweep_from_cache_never_runs_the_teacher(teacher_cache, cache_dir, tmp_path):
    proc = run_cli(
        [
            "-m",
            *SMOKE,
            "teacher=cache",
            f"teacher.cache_dir={teacher_cache}",
            "optim.lr=1e-3,2e-3",
            f"hydra.sweep.dir={tmp_path}",
        ],
        cache_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = proc.stdout + proc.stderr
    assert logs.count("no teacher model is loaded or run") == 2
    assert "training the teacher" not in logs
    for job in ("0", "1"):
        metrics = json.loads((tmp_path / job / "metrics.json").read_text())
        assert metrics["teacher.val_ppl"] > 1 and 0 <= metrics["student.top1_agreement"] <= 1
    header = (tmp_path / "0" / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/forward_kl", "train/ce"} <= set(header)


def test_cache_for_other_data_is_refused(teacher_cache, cache_dir, tmp_path):
    proc = run_cli(
        [
            *SMOKE,
            "teacher=cache",
            f"teacher.cache_dir={teacher_cache}",
            "data.max_docs=30",
            f"hydra.run.dir={tmp_path}",
        ],
        cache_dir,
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("distill-train: error:") and "cache" in last


def test_live_only_terms_are_refused_with_a_cache(teacher_cache, cache_dir, tmp_path):
    proc = run_cli(
        [*SMOKE, "teacher=cache", f"teacher.cache_dir={teacher_cache}", "loss=gkd", f"hydra.run.dir={tmp_path}"],
        cache_dir,
    )
    assert proc.returncode != 0 and "needs a live teacher" in proc.stderr.strip().splitlines()[-1]


def test_cache_from_another_teacher_is_refused(teacher_cache, cache_dir, tmp_path):
    """The student is pruned from a teacher that is not the one whose outputs the cache holds."""
    proc = run_cli(
        [
            *SMOKE,
            "teacher=cache",
            f"teacher.cache_dir={teacher_cache}",
            "teacher.scratch.max_steps=12",
            f"hydra.run.dir={tmp_path}",
        ],
        cache_dir,
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "was built for a different teacher (teacher_key" in last, last
    assert not (tmp_path / "metrics.json").exists()


def test_compact_cache_writes_and_trains(cache_dir, tmp_path):
    """teacher.cache_format=compact: the same two commands; training reads the format from the manifest."""
    where = tmp_path / "compact"
    proc = run_cli(
        [*SMOKE, f"teacher.cache_dir={where}", "teacher.cache_format=compact", f"hydra.run.dir={tmp_path / 'cache'}"],
        cache_dir,
        prog="distill-cache",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((where / "manifest.json").read_text())
    assert (manifest["format_version"], manifest["cache_format"]) == (2, "compact")
    assert 75 <= manifest["bytes_per_token"] < 80  # k=64, vocab 512: 35 + 40 bytes of records, plus .npy headers
    proc = run_cli(
        [*SMOKE, "teacher=cache", f"teacher.cache_dir={where}", f"hydra.run.dir={tmp_path / 'train'}"], cache_dir
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no teacher model is loaded or run" in proc.stdout + proc.stderr
    metrics = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert 1 < metrics["student.val_ppl"] < 512 and 0 <= metrics["student.top1_agreement"] <= 1


def test_sampled_cache_writes_trains_and_refuses_a_biased_objective(cache_dir, tmp_path):
    """teacher.cache_mode=sample: the same two commands; forward KL + CE train on it, reverse KL is one line."""
    where = tmp_path / "sampled"
    sample = ["teacher.cache_mode=sample", "teacher.samples=16"]
    proc = run_cli(
        [*SMOKE, f"teacher.cache_dir={where}", *sample, f"hydra.run.dir={tmp_path / 'cache'}"],
        cache_dir,
        prog="distill-cache",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((where / "manifest.json").read_text())
    assert (manifest["format_version"], manifest["cache_mode"], manifest["samples"]) == (3, "sample", 16)
    assert 0 <= manifest["extra"]["teacher.ece"] <= 1
    train = [*SMOKE, "teacher=cache", f"teacher.cache_dir={where}"]
    proc = run_cli([*train, f"hydra.run.dir={tmp_path / 'train'}"], cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(16 draws per token)" in proc.stdout + proc.stderr  # not "top-16"
    metrics = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert 1 < metrics["student.val_ppl"] < 512 and 0 <= metrics["student.ece"] <= 1
    assert "student.top1_agreement" not in metrics  # the sample's mode is not the teacher's top-1
    proc = run_cli([*train, "+loss.weights.reverse_kl=0.5", f"hydra.run.dir={tmp_path / 'rkl'}"], cache_dir)
    assert proc.returncode == 2
    assert "not reverse_kl" in proc.stderr.strip().splitlines()[-1]
