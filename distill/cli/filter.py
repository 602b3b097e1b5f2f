"""``distill-filter``: run only the data-filter pipeline and print its stats table."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from distill.cli.errors import run_with_one_line_errors
from distill.cli.resolvers import register
from distill.cli.train import CONFIG_DIR, quiet_lightning

register()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="filter")
def _app(cfg: DictConfig) -> None:
    from distill.run.filter import run_filters  # heavy imports after Hydra has parsed the command line

    quiet_lightning()
    run_filters(cfg)


def main() -> None:
    run_with_one_line_errors(_app, "distill-filter")


if __name__ == "__main__":
    main()
