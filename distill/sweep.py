"""Resumable Optuna sweeps: a Hydra callback that makes ``hydra.sweeper.n_trials`` the size of
the *study*, not the number of trials to add.

hydra-optuna-sweeper already loads an existing study (``load_if_exists``), but it then runs
``n_trials`` more trials every time, and a trial whose sweep was killed stays ``RUNNING``
forever. Rerunning an interrupted sweep with the same command should finish it instead. The
sweeper has no hook for that, and its loop is one long method, so rather than fork it this
callback adjusts the config in ``on_multirun_start``, which Hydra calls before it builds the
sweeper from that same config:

- trials left ``RUNNING`` by a killed sweep are marked ``FAIL`` (they never returned a value);
- ``n_trials`` becomes ``n_trials`` minus the trials already ``COMPLETE`` or ``PRUNED``;
- the sampler's seed is offset by the number of trials before (a sampler seeded as before would
  propose the finished trials' parameters again);
- new trials' run dirs are named ``<trials before>+<job number>`` so a resumed sweep in the same
  ``hydra.sweep.dir`` never overwrites an earlier trial's dir.

One sweeper process per study: a second sweeper running on the same study at the same time
would see the first one's trials as stale.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from lightning.pytorch import Callback as LightningCallback
from omegaconf import DictConfig, open_dict, read_write

log = logging.getLogger(__name__)
FINISHED = ("COMPLETE", "PRUNED")
PRUNED_AT = "distill.pruned_at_step"  # the trial attribute hydra_plugins/distill_optuna reads


def sqlite_path(storage: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(storage[len(prefix) :]) if storage.startswith(prefix) else None


def existing_trials(storage: str, study_name: str) -> list:
    """The study's trials, or [] when the storage holds no study of that name yet."""
    import optuna

    names = {s.study_name for s in optuna.get_all_study_summaries(storage=storage)}
    if study_name not in names:
        return []
    return optuna.load_study(study_name=study_name, storage=storage).trials


def fail_stale_trials(storage: str, study_name: str) -> int:
    """Mark trials left RUNNING by a killed sweep as FAIL; returns how many."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=study_name, storage=storage)
    stale = [t for t in study.trials if t.state == TrialState.RUNNING]
    for trial in stale:
        study._storage.set_trial_state(trial._trial_id, TrialState.FAIL)  # optuna<3 has no public API for this
    return len(stale)


class ResumeStudy(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweeper = config.hydra.sweeper
        storage, study_name = sweeper.get("storage"), sweeper.get("study_name")
        if not storage or not study_name or "n_trials" not in sweeper:
            return  # not an Optuna sweep with a persistent study: nothing to resume
        path = sqlite_path(storage)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)  # sqlite creates the file, not its directory
        trials = existing_trials(storage, study_name)
        if not trials:
            log.info("optuna study %s in %s: new", study_name, storage)
            return
        stale = fail_stale_trials(storage, study_name)
        done = sum(t.state.name in FINISHED for t in trials)
        remaining = max(0, int(sweeper.n_trials) - done)
        log.info(
            "optuna study %s: resuming with %d finished trials (%d stale RUNNING marked FAIL); %d of %d to run",
            study_name,
            done,
            stale,
            remaining,
            sweeper.n_trials,
        )
        with read_write(config), open_dict(config):
            config.hydra.sweeper.n_trials = remaining
            sampler = config.hydra.sweeper.get("sampler")
            if sampler is not None and sampler.get("seed") is not None:
                # a sampler reseeded as before would draw the finished trials' parameters again
                sampler.seed = int(sampler.seed) + len(trials)
            # The launcher recomposes each job's config from the command line, so the job's run
            # dir is changed by adding a Hydra override, not by editing this config.
            config.hydra.overrides.hydra.append(f"hydra.sweep.subdir='{len(trials)}+${{hydra.job.num}}'")


class OptunaPruning(LightningCallback):
    """Report the validation loss of a sweep trial to its Optuna study and stop the trial when the
    study's pruner says so (``hydra/sweeper=optuna_pruning`` tells the job its trial number and
    records the stopped trial as PRUNED). Inactive when ``trial`` is None (not in such a sweep).

    Rank 0 talks to the study; the decision is broadcast so every rank stops at the same step.
    """

    def __init__(
        self,
        storage: str | None,
        study_name: str | None,
        trial: int | None,
        pruner: Any = None,
        monitor: str = "val/ce",
    ):
        self.storage, self.study_name, self.number, self.pruner, self.monitor = (
            storage,
            study_name,
            trial,
            pruner,
            monitor,
        )
        self._trial = None

    def trial(self):
        if self._trial is None:
            import optuna

            study = optuna.load_study(study_name=self.study_name, storage=self.storage, pruner=self.pruner)
            trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, self.number)
            self._trial = optuna.trial.Trial(study, trial_id)
        return self._trial

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.number is None or self.storage is None or trainer.sanity_checking:
            return
        prune = False
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.is_global_zero and value is not None:
            trial = self.trial()
            trial.report(float(value), step=trainer.global_step)
            last = trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step
            prune = not last and trial.should_prune()  # at the last validation there is nothing left to save
            if prune:
                trial.set_user_attr(PRUNED_AT, trainer.global_step)
                log.info(
                    "optuna trial %d pruned at step %d (%s %.4g)",
                    self.number,
                    trainer.global_step,
                    self.monitor,
                    float(value),
                )
        if trainer.strategy.broadcast(prune, src=0):
            trainer.should_stop = True
