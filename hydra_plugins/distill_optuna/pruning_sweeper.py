"""hydra-optuna-sweeper with a pruner: ``hydra/sweeper=optuna_pruning``.

The stock sweeper runs each trial as a Hydra job that returns one number, so an Optuna pruner
never sees intermediate values. This sweeper closes the loop with two small additions, keeping
the stock sweep loop (TPE, batches of ``n_jobs``, failure rate, any launcher, SLURM included):

- each trial's job gets its Optuna trial number as an override (``optuna_trial=<n>``), and the
  study is created with the configured pruner;
- the job (``distill.sweep.OptunaPruning``, a Lightning callback) reports its validation loss to
  that trial in the shared storage at every validation, asks the pruner, and on "prune" stops
  training and marks the trial; when the job returns, the sweeper records the marked trial as
  PRUNED (with its last reported value) instead of COMPLETE.

It lives under ``hydra_plugins`` because Hydra instantiates sweepers only from there.
"""

from dataclasses import dataclass
from functools import cache
from typing import Any

from hydra.core.config_store import ConfigStore

from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

# The trial user attribute the job sets when the pruner stops it (distill.sweep.PRUNED_AT).
PRUNED_AT = "distill.pruned_at_step"


@dataclass
class PruningOptunaSweeperConf(OptunaSweeperConf):
    _target_: str = "hydra_plugins.distill_optuna.pruning_sweeper.PruningOptunaSweeper"
    pruner: Any = None  # e.g. {_target_: optuna.pruners.MedianPruner, n_startup_trials: 5}
    trial_key: str = "optuna_trial"  # the config key that receives the trial number


ConfigStore.instance().store(
    group="hydra/sweeper", name="optuna_pruning", node=PruningOptunaSweeperConf, provider="distill"
)


class PruningOptunaSweeper(OptunaSweeper):
    def __init__(self, *, pruner: Any = None, trial_key: str = "optuna_trial", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sweeper.__class__ = impl_classes()[0]
        self.sweeper.pruner, self.sweeper.trial_key = pruner, trial_key


@cache
def impl_classes():
    """Built on first use: Hydra imports every plugin module at each app start, and optuna is slow to import."""
    import optuna
    from optuna.trial import TrialState

    from hydra_plugins.hydra_optuna_sweeper import _impl

    class PrunedAwareStudy(optuna.Study):
        """A study whose ``tell`` records PRUNED for a trial its job marked as pruned."""

        def tell(self, trial, values=None, state=None):  # noqa: D102 - optuna's signature
            trial_id = trial._trial_id if isinstance(trial, optuna.trial.Trial) else None
            # read past the storage's cache: the job marked the trial through its own connection
            storage = getattr(self._storage, "_backend", self._storage)
            if (
                trial_id is not None
                and state != TrialState.FAIL
                and PRUNED_AT in storage.get_trial(trial_id).user_attrs
            ):
                return super().tell(trial, state=TrialState.PRUNED)
            return super().tell(trial, values=values, state=state)

    class PruningOptunaSweeperImpl(_impl.OptunaSweeperImpl):
        pruner: Any = None
        trial_key: str = "optuna_trial"

        def _configure_trials(self, trials, search_space_distributions, fixed_params):
            overrides = super()._configure_trials(trials, search_space_distributions, fixed_params)
            return [(*o, f"{self.trial_key}={t.number}") for o, t in zip(overrides, trials)]

        def sweep(self, arguments):
            # The stock loop creates its study with optuna.create_study and no pruner: give it ours.
            create, pruner = optuna.create_study, self.pruner

            def create_study(*args, **kwargs):
                study = create(*args, pruner=pruner, **kwargs)
                study.__class__ = PrunedAwareStudy
                return study

            optuna.create_study = create_study
            try:
                return super().sweep(arguments)
            finally:
                optuna.create_study = create

    return PruningOptunaSweeperImpl, PrunedAwareStudy
