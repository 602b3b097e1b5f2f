"""``distill-train``: the main job. With no arguments it runs ``experiment=quickstart``."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from distill.cli.errors import run_with_one_line_errors
from distill.cli.resolvers import register
from distill.config.tree import CONFIG_DIR
from distill.errors import DistillError

register()


def quiet_lightning() -> None:
    """Lightning installs its own console handler; Hydra's root handlers already print and
    write the job log, so drop Lightning's to avoid every line appearing twice."""
    import logging

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()


TASKS = {"causal_lm": "distill.run.train", "embedding": "distill.embedding.train"}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _app(cfg: DictConfig) -> float:
    import importlib

    task = cfg.get("task", "causal_lm")
    if task not in TASKS:
        raise DistillError(f"task must be one of {list(TASKS)}, got {task!r}")
    run = importlib.import_module(TASKS[task])  # heavy imports after Hydra has parsed the command line
    quiet_lightning()  # after `import lightning`, which adds the handler
    return run.train(cfg)


def main() -> None:
    run_with_one_line_errors(_app, "distill-train")


if __name__ == "__main__":
    main()
