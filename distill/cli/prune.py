"""``distill-prune``: write the pruned student and its pruning report, without training."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from distill.cli.errors import run_with_one_line_errors
from distill.cli.resolvers import register
from distill.cli.train import CONFIG_DIR, quiet_lightning

register()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="prune")
def _app(cfg: DictConfig) -> None:
    from distill.run.prune import prune  # heavy imports after Hydra has parsed the command line

    quiet_lightning()
    prune(cfg)


def main() -> None:
    run_with_one_line_errors(_app, "distill-prune")


if __name__ == "__main__":
    main()
