"""distill.sweep.ResumeStudy on a stored study: n_trials counts the whole study, trials a killed
sweep left RUNNING are failed, the sampler is reseeded and new run dirs are offset."""

import optuna
from omegaconf import OmegaConf

from distill.sweep import ResumeStudy


def hydra_config(storage, n_trials=4, seed=0):
    return OmegaConf.create({"hydra": {
        "sweeper": {"storage": storage, "study_name": "s", "n_trials": n_trials, "sampler": {"seed": seed}},
        "sweep": {"dir": "x", "subdir": "${hydra.job.num}"}, "overrides": {"hydra": ["hydra.sweep.dir=x"]}}})


def test_resume_counts_finished_trials_and_fails_stale_ones(tmp_path):
    storage = f"sqlite:///{tmp_path}/db/optuna.db"
    cfg = hydra_config(storage)
    ResumeStudy().on_multirun_start(cfg)  # a new study: nothing changes, the db's directory is made
    assert cfg.hydra.sweeper.n_trials == 4 and (tmp_path / "db").is_dir()

    study = optuna.create_study(study_name="s", storage=storage)
    study.tell(study.ask({"x": optuna.distributions.UniformDistribution(0, 1)}), 1.0)
    study.ask()  # left RUNNING, as by a sweep killed mid-trial
    OmegaConf.set_readonly(cfg, True)  # Hydra hands callbacks a read-only config
    ResumeStudy().on_multirun_start(cfg)
    assert [t.state.name for t in optuna.load_study(study_name="s", storage=storage).trials] == ["COMPLETE", "FAIL"]
    assert cfg.hydra.sweeper.n_trials == 3  # 4 in all, 1 finished
    assert cfg.hydra.sweeper.sampler.seed == 2  # offset by the 2 trials before
    assert OmegaConf.to_container(cfg.hydra.overrides.hydra)[-1] == "hydra.sweep.subdir='2+${hydra.job.num}'"


def test_in_memory_study_is_left_alone():
    cfg = hydra_config(None)
    ResumeStudy().on_multirun_start(cfg)
    assert cfg.hydra.sweeper.n_trials == 4 and list(cfg.hydra.overrides.hydra) == ["hydra.sweep.dir=x"]
