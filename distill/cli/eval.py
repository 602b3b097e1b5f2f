"""``distill-eval``: compare a teacher and its students (quality, size, speed) in one table, across
tokenizers too (bits per byte)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from distill.cli.errors import run_with_one_line_errors
from distill.cli.resolvers import register
from distill.cli.train import CONFIG_DIR, quiet_lightning

register()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def _app(cfg: DictConfig) -> None:
    from distill.eval.compare import run_eval  # heavy imports after Hydra has parsed the command line

    quiet_lightning()
    run_eval(cfg)


def main() -> None:
    run_with_one_line_errors(_app, "distill-eval")


if __name__ == "__main__":
    main()
