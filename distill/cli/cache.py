"""``distill-cache``: write the offline teacher cache that ``distill-train teacher=cache`` reads."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from distill.cli.errors import run_with_one_line_errors
from distill.cli.resolvers import register
from distill.cli.train import CONFIG_DIR, quiet_lightning

register()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="cache")
def _app(cfg: DictConfig) -> None:
    from distill.run.cache import build_cache  # heavy imports after Hydra has parsed the command line

    quiet_lightning()
    build_cache(cfg)


def main() -> None:
    run_with_one_line_errors(_app, "distill-cache")


if __name__ == "__main__":
    main()
