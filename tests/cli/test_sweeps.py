"""hparams_search=kd_optuna end to end: an Optuna sweep over a teacher cache, resumed from its
sqlite study, summarized by distill-report, with secrets in the environment that must appear in
no file the sweep writes."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.cli]
# Fewer documents than the smoke default: the cache (a teacher forward over the data) is the slow part.
DATA = ["experiment=smoke", "data.max_docs=12"]
SECRETS = {
    "HF_TOKEN": "hf_sweepSECRET0123456789",
    "WANDB_API_KEY": "wbSECRETkey0123456789abcdef",
    "MY_DB_PASSWORD": "hunter2-sweep-secret",
}
LITERAL = "literalSECRETkey987"


def sweep(sweep_dir, cache_dir, n_trials):
    args = [
        "hparams_search=kd_optuna",
        *DATA,
        f"teacher.cache_dir={teacher_cache(cache_dir)}",
        f"hydra.sweep.dir={sweep_dir}",
        f"hydra.sweeper.n_trials={n_trials}",
        "logger=[csv,tensorboard,wandb]",
        "+hub.token=${oc.env:HF_TOKEN}",
        "+note=${oc.env:MY_DB_PASSWORD}",
        f"+hub.api_key={LITERAL}",
    ]
    old = {k: os.environ.get(k) for k in SECRETS}
    os.environ.update(SECRETS)  # run_cli passes os.environ to the child
    try:
        proc = run_cli(args, cache_dir)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def teacher_cache(cache_dir):
    """The sweep's own teacher cache: the default path (teacher_cache/smoke) is shared with every
    other smoke test in the session, and a cache of another build there is (rightly) refused."""
    return cache_dir / "sweep_teacher_cache"


def study_trials(sweep_dir):
    import optuna

    return optuna.load_study(study_name="kd_optuna", storage=f"sqlite:///{sweep_dir}/optuna.db").trials


@pytest.fixture(scope="module")
def first_sweep(tmp_path_factory, cache_dir):
    cache_run = tmp_path_factory.mktemp("sweep-cache-run")
    args = [*DATA, f"teacher.cache_dir={teacher_cache(cache_dir)}", f"hydra.run.dir={cache_run}"]
    proc = run_cli(args, cache_dir, prog="distill-cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((cache_run / "run_info.json").read_text())["config"]["teacher"]["backend"] == "cache"  # every CLI
    sweep_dir = tmp_path_factory.mktemp("sweep") / "s"
    proc = sweep(sweep_dir, cache_dir, n_trials=1)
    return sweep_dir, proc


def test_trial_has_its_own_run_dir_and_reads_the_cache(first_sweep):
    sweep_dir, _ = first_sweep
    metrics = json.loads((sweep_dir / "0" / "metrics.json").read_text())
    assert metrics["teacher.source"] == "cache" and metrics["teacher.trained_in_run"] is False
    overrides = (sweep_dir / "0" / ".hydra" / "overrides.yaml").read_text()
    for knob in ("optim.lr=", "loss.temperature=", "loss.weights.ce=", "teacher.read_top_k=", "student.target_params="):
        assert knob in overrides
    assert "optuna_trial=0" in overrides  # the pruning sweeper tells the job its trial
    [trial] = study_trials(sweep_dir)
    assert trial.state.name == "COMPLETE" and trial.value == pytest.approx(metrics["student.val_ppl"])
    assert sorted(trial.intermediate_values) == [10, 20]  # val/ce reported at each validation (smoke: every 10 steps)


def test_run_info_and_wandb_group(first_sweep):
    sweep_dir, _ = first_sweep
    info = json.loads((sweep_dir / "0" / "run_info.json").read_text())
    assert len(info["git"]["commit"]) == 40 and isinstance(info["git"]["dirty"], bool)
    assert info["versions"]["torch"].startswith("2.") and "lightning" in info["versions"]
    assert info["config"]["optim"]["lr"] > 0 and info["hydra"]["mode"] == "MULTIRUN"
    assert info["config"]["logger"]["wandb"]["group"] == f"{sweep_dir.parent.name}/{sweep_dir.name}"
    hparams = (sweep_dir / "0" / "csv" / "hparams.yaml").read_text()
    assert info["git"]["commit"] in hparams and "versions/transformers" in hparams
    assert list((sweep_dir / "0" / "tensorboard").glob("events.out.tfevents.*"))
    assert list((sweep_dir / "0" / "wandb").glob("offline-run-*"))


def leaks(sweep_dir) -> list[tuple[str, str]]:
    """(file, secret) for every secret found in a file under the sweep dir."""
    secrets = [v.encode() for v in (*SECRETS.values(), LITERAL)]
    return [
        (str(p.relative_to(sweep_dir)), s.decode())
        for p in sweep_dir.rglob("*")
        if p.is_file()
        for s in secrets
        if s in p.read_bytes()
    ]


def test_no_secret_in_any_file_the_sweep_wrote(first_sweep):
    sweep_dir, proc = first_sweep
    # the one known leak is left to the xfail below, so that this test still guards every other file
    assert [leak for leak in leaks(sweep_dir) if leak != ("optuna.db", LITERAL)] == []
    assert not any(s in proc.stdout + proc.stderr for s in (*SECRETS.values(), LITERAL))
    # the interpolation is kept (it names the variable, not its value) and the literal is masked
    config = (sweep_dir / "0" / ".hydra" / "config.yaml").read_text()
    assert "${oc.env:HF_TOKEN}" in config and "api_key: '***'" in config


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason=(
        "known limit (README): hydra-optuna-sweeper stores the command-line overrides it does not search as "
        "trial attributes in the study database, so a secret typed literally on the command line lands in "
        "optuna.db (secrets from the environment, also through ${oc.env:...}, do not). Strict: the day it is "
        "fixed this test passes, fails the suite, and the xfail and the README's note go."
    ),
)
def test_no_secret_typed_on_the_command_line_in_the_study_database(first_sweep):
    sweep_dir, _ = first_sweep
    assert ("optuna.db", LITERAL) not in leaks(sweep_dir)


def test_rerun_resumes_the_study_and_report_covers_every_trial(first_sweep, cache_dir, tmp_path):
    sweep_dir, _ = first_sweep
    before = (sweep_dir / "0" / "metrics.json").read_text()
    sweep(sweep_dir, cache_dir, n_trials=2)
    trials = study_trials(sweep_dir)
    # 2 in all, not 1 + 2 (none pruned: the preset's MedianPruner waits for 5 finished trials)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert trials[0].params != trials[1].params  # the finished trial was not proposed again
    assert (sweep_dir / "0" / "metrics.json").read_text() == before  # its run dir untouched
    assert (sweep_dir / "1+0" / "metrics.json").exists()

    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "distill.cli.report", str(sweep_dir)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = (sweep_dir / "sweep_report.md").read_text()
    rows = [ln for ln in report.splitlines() if ln.startswith(("| 0 ", "| 1+0 "))]
    assert len(rows) == 2 and all("read from cache" in r and "trained here" not in r for r in rows)
    assert (sweep_dir / "sweep_report.png").stat().st_size > 0
