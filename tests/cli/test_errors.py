"""User errors end with one clear line on stderr and a non-zero exit, before training starts."""

import pytest

from tests.conftest import run_cli


def _last_line(proc):
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


@pytest.mark.parametrize(
    "args, expected",
    [
        (["bogus_key=1"], "bogus_key"),
        (["trainer.bogus=1"], "bogus"),
        (["student=nonexistent"], "student/nonexistent"),
        (["teacher.path=/no/such/model"], "teacher.path does not exist: /no/such/model"),
        (["loss.temperature=0"], "loss.temperature must be > 0"),
        (["loss.temperature=-2"], "loss.temperature must be > 0"),
        (["loss.weights.forward_kl=-1"], "loss weights must be >= 0"),
        (["optim.lr=0"], "optim.lr must be > 0"),
        (["optim.lr=-0.001"], "optim.lr must be > 0"),
        (["trainer=gpu"], "no CUDA GPU is available"),
        (["callbacks.model_checkpoint.dirpath=/tmp/distill-elsewhere"], "is outside the run dir"),
        (["memory.available_bytes=1000"], "GiB is free"),
    ],
)
def test_config_and_path_errors(args, expected, cache_dir, tmp_path):
    proc = run_cli(["experiment=smoke", f"hydra.run.dir={tmp_path}", *args], cache_dir)
    assert proc.returncode != 0
    assert expected in _last_line(proc)
    assert _last_line(proc).startswith("distill-train: error:")
    assert "Traceback" not in proc.stderr
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
    proc = run_cli(["experiment=smoke", f"hydra.run.dir={tmp_path / 'run'}", f"teacher.path={tmp_path / 'notamodel'}"],
                   cache_dir)
    assert proc.returncode != 0
    assert "not a Hugging Face model directory" in _last_line(proc)
