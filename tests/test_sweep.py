"""distill.sweep on stored studies: ResumeStudy (n_trials counts the whole study, trials a killed
sweep left RUNNING are failed, the sampler is reseeded, new run dirs are offset) and pruning (the
job reports to its trial and stops when the pruner says so; the sweeper records it PRUNED)."""

from types import SimpleNamespace

import optuna
from omegaconf import OmegaConf

from distill.sweep import PRUNED_AT, OptunaPruning, ResumeStudy


def hydra_config(storage, n_trials=4, seed=0):
    return OmegaConf.create(
        {
            "hydra": {
                "sweeper": {"storage": storage, "study_name": "s", "n_trials": n_trials, "sampler": {"seed": seed}},
                "sweep": {"dir": "x", "subdir": "${hydra.job.num}"},
                "overrides": {"hydra": ["hydra.sweep.dir=x"]},
            }
        }
    )


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


def fake_trainer(value, step, max_steps=30):
    import torch

    return SimpleNamespace(
        sanity_checking=False,
        is_global_zero=True,
        callback_metrics={"val/ce": torch.tensor(value)},
        global_step=step,
        max_steps=max_steps,
        should_stop=False,
        strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj),
    )


def test_pruning_callback_reports_and_stops_a_worse_trial(tmp_path):
    storage = f"sqlite:///{tmp_path}/o.db"
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    study = optuna.create_study(study_name="s", storage=storage, pruner=pruner)
    done = study.ask()
    done.report(1.0, step=10)
    study.tell(done, 1.0)
    better, worse = study.ask(), study.ask()

    trainer = fake_trainer(0.5, step=10)
    OptunaPruning(storage, "s", trial=better.number, pruner=pruner).on_validation_end(trainer, None)
    assert trainer.should_stop is False
    trainer = fake_trainer(2.0, step=10)
    OptunaPruning(storage, "s", trial=worse.number, pruner=pruner).on_validation_end(trainer, None)
    assert trainer.should_stop is True
    trainer = fake_trainer(3.0, step=30)  # the last validation: reported, never pruned
    OptunaPruning(storage, "s", trial=better.number, pruner=pruner).on_validation_end(trainer, None)
    assert trainer.should_stop is False

    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert trials[1].intermediate_values == {10: 0.5, 30: 3.0} and PRUNED_AT not in trials[1].user_attrs
    assert trials[2].intermediate_values == {10: 2.0} and trials[2].user_attrs[PRUNED_AT] == 10
    # not in a pruning sweep (no trial number): does nothing
    trainer = fake_trainer(9.0, step=10)
    OptunaPruning(storage, "s", trial=None).on_validation_end(trainer, None)
    assert trainer.should_stop is False


def test_sweeper_study_records_a_marked_trial_as_pruned(tmp_path):
    from hydra_plugins.distill_optuna.pruning_sweeper import PRUNED_AT as SWEEPER_ATTR
    from hydra_plugins.distill_optuna.pruning_sweeper import impl_classes

    assert SWEEPER_ATTR == PRUNED_AT
    storage = f"sqlite:///{tmp_path}/o.db"
    study = optuna.create_study(study_name="s", storage=storage)
    study.__class__ = impl_classes()[1]
    marked, plain = study.ask(), study.ask()
    marked.report(4.0, step=10)
    other = optuna.load_study(study_name="s", storage=storage)  # the job's own connection
    optuna.trial.Trial(other, marked._trial_id).set_user_attr(PRUNED_AT, 10)
    study.tell(marked, values=[7.0], state=optuna.trial.TrialState.COMPLETE)
    study.tell(plain, values=[5.0], state=optuna.trial.TrialState.COMPLETE)
    states = [(t.state.name, t.value) for t in optuna.load_study(study_name="s", storage=storage).trials]
    assert states == [("PRUNED", 4.0), ("COMPLETE", 5.0)]
