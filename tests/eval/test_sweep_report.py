"""distill-report on hand-made run dirs: the table, the Pareto front, failed trials listed."""

import json

import pytest

from distill.cli.report import main
from distill.eval.sweep_report import find_trials, mark_pareto, write_sweep_report


def make_trial(root, name, overrides, metrics=None, log=""):
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "train.log").write_text(log)
    return run


def m(ppl, params, speed, source="cache"):
    return {
        "student.val_ppl": ppl,
        "student.params": params,
        "train.tokens_per_s": speed,
        "train.wall_s": 3.0,
        "teacher.source": source,
        "teacher.trained_in_run": False,
    }


@pytest.fixture
def sweep(tmp_path):
    common = ["experiment=smoke", "hparams_search=kd_optuna"]
    make_trial(tmp_path, "0", ["optim.lr=0.001", *common], m(20.0, 1000, 500.0))  # front: best ppl
    make_trial(tmp_path, "1", ["optim.lr=0.002", *common], m(25.0, 500, 500.0))  # front: smallest
    make_trial(tmp_path, "2", ["optim.lr=0.003", *common], m(26.0, 600, 400.0))  # dominated by 1
    make_trial(tmp_path, "3", ["optim.lr=0.004", *common], m(30.0, 1000, 900.0, source="live"))  # front: fastest
    make_trial(tmp_path, "10", ["optim.lr=0.005", *common], None, log="[x][ERROR] - RuntimeError: boom\n")
    make_trial(tmp_path, "4", ["optim.lr=0.006", *common], None)  # killed: no log line
    make_trial(
        tmp_path,
        "5",
        ["optim.lr=0.007", *common],
        m(19.0, 400, 950.0),  # would dominate all, but pruned
        log="[distill.sweep][INFO] - optuna trial 5 pruned at step 20 (val/ce 5.6)\n",
    )
    return tmp_path


def test_pareto_front_over_ppl_params_and_speed(sweep):
    trials = find_trials(sweep)
    assert [t.name for t in trials] == ["0", "1", "2", "3", "4", "5", "10"]  # job order, not string order
    mark_pareto(trials)
    assert {t.name for t in trials if t.pareto} == {"0", "1", "3"}


def test_report_lists_every_trial_and_failures(sweep):
    md_path, png_path, trials = write_sweep_report(sweep)
    text = md_path.read_text()
    assert png_path.stat().st_size > 0
    assert "7 trials: 5 finished, 2 failed or incomplete" in text
    assert "pruned at step 20 |" in next(ln for ln in text.splitlines() if ln.startswith("| 5 "))
    assert "Every trial: `experiment=smoke hparams_search=kd_optuna`" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| 2 "))
    assert "`optim.lr=0.003`" in row and "| 26 |" in row and "read from cache" in row and "★" not in row
    assert "ran (live)" in next(ln for ln in text.splitlines() if ln.startswith("| 3 "))
    assert "- `10`: no metrics.json: [x][ERROR] - RuntimeError: boom" in text
    assert "- `4`: no metrics.json: failed or unfinished" in text
    assert "Teacher run or trained in 1 of 7 trials (3)." in text


def test_cli_error_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().startswith("distill-report: error: no trials in")
