"""``distill-export``: a run's student as a GGUF file for llama.cpp (``export.gguf=f16|bf16|q8_0|q4_0|tq2_0``)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from distill.cli.errors import run_with_one_line_errors
from distill.cli.resolvers import register
from distill.cli.train import CONFIG_DIR, quiet_lightning

register()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def _app(cfg: DictConfig) -> None:
    from distill.export.command import export  # heavy imports after Hydra has parsed the command line

    quiet_lightning()
    export(cfg)


def main() -> None:
    run_with_one_line_errors(_app, "distill-export")


if __name__ == "__main__":
    main()
