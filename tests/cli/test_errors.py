"""User errors end with one clear line on stderr and a non-zero exit, before training starts."""

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.cli  # each case starts distill-train in a subprocess


def _last_line(proc):
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


@pytest.mark.parametrize(
    "args, expected",
    [
        (["bogus_key=1"], ["bogus_key"]),
        (["trainer.bogus=1"], ["bogus"]),
        (["student=nonexistent"], ["student/nonexistent"]),
        (["teacher.path=/no/such/model"], ["teacher.path does not exist: /no/such/model"]),
        # ranges: the key and the rule (validate() words it "loss.temperature=0: expected > 0")
        (["loss.temperature=0"], ["loss.temperature", "> 0"]),
        (["loss.temperature=-2"], ["loss.temperature", "> 0"]),
        (["loss.weights.forward_kl=-1"], ["forward_kl", ">= 0"]),
        (["optim.lr=0"], ["optim.lr", "> 0"]),
        (["optim.lr=-0.001"], ["optim.lr", "> 0"]),
        (["trainer=gpu"], ["no CUDA GPU is available"]),
        (["callbacks.model_checkpoint.dirpath=/tmp/distill-elsewhere"], ["is outside the run dir"]),
        (["memory.available_bytes=1000"], ["GiB is free"]),
    ],
)
def test_config_and_path_errors(args, expected, cache_dir, tmp_path):
    proc = run_cli(["experiment=smoke", f"hydra.run.dir={tmp_path}", *args], cache_dir)
    assert proc.returncode != 0
    assert all(part in _last_line(proc) for part in expected), _last_line(proc)
    assert _last_line(proc).startswith("distill-train: error:")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        # a key Hydra does not know, a config group, a group's option: the nearest valid name
        (["studnt=depth"], "Could not override 'studnt'. Key 'studnt' is not in struct; did you mean student?"),
        (["debg=default"], "did you mean debug?"),  # a group with no option chosen (debug: null)
        (["loss.temprature=1"], "Key 'temprature' is not in struct; did you mean loss.temperature?"),
        (["trainr.max_steps=3"], "did you mean trainer.max_steps?"),
        (["student=deph"], "Could not find 'student/deph'; did you mean student=depth?"),
        (["data/filters=[code,dedupe]"], "Could not load 'data/filters/dedupe'; did you mean data/filters=dedup?"),
        (["experiment=smok"], "did you mean experiment=smoke?"),
        (["hydra/launcher=slurmm"], "did you mean hydra/launcher=slurm?"),
        # nothing close: the options, or how to add a new key
        (["student=nonexistent"], "(options in student: depth, every_other_layer, layers, magnitude, moe_upcycle,"),
        (["loss.weights.jsd=1"], "Key 'jsd' is not in struct; to add it: +loss.weights.jsd=1"),
    ],
)
def test_misspelt_names_suggest_the_nearest(args, expected, cache_dir, tmp_path):
    proc = run_cli(["experiment=smoke", f"hydra.run.dir={tmp_path}", *args], cache_dir)
    assert proc.returncode != 0
    assert expected in _last_line(proc), _last_line(proc)
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        (["loss.temperature=abc"], "loss.temperature='abc': expected a number (float)"),
        (["data.batch_size=many"], "data.batch_size='many': expected an integer (int)"),
        (["optim.lr=-1.0"], "optim.lr=-1.0: expected > 0"),
        (
            ["+loss.temprature=1"],
            (
                "loss.temprature: unknown key, not an argument of "
                "distill.losses.objective.Objective; did you mean loss.temperature?"
            ),
        ),
        (["data=files"], "data.paths is missing (???): give it a value, e.g. on the command line data.paths=..."),
    ],
)
def test_settings_are_checked_before_any_work(args, expected, cache_dir, tmp_path):
    """distill.config.validate() at the start of the run (the shared run setup)."""
    proc = run_cli(["experiment=smoke", f"hydra.run.dir={tmp_path}", *args], cache_dir)
    assert proc.returncode != 0
    assert _last_line(proc) == f"distill-train: error: {expected}"
    assert not (tmp_path / "metrics.json").exists()


def test_empty_corpus(cache_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    proc = run_cli(
        ["experiment=smoke", f"hydra.run.dir={tmp_path / 'run'}", "data=files", f"data.paths=[{empty}]"], cache_dir
    )
    assert proc.returncode != 0
    assert "corpus is empty" in _last_line(proc)
    assert "Traceback" not in proc.stderr


def test_teacher_dir_without_model(cache_dir, tmp_path):
    (tmp_path / "notamodel").mkdir()
    proc = run_cli(
        ["experiment=smoke", f"hydra.run.dir={tmp_path / 'run'}", f"teacher.path={tmp_path / 'notamodel'}"], cache_dir
    )
    assert proc.returncode != 0
    assert "not a Hugging Face model directory" in _last_line(proc)
