"""The body of ``distill-filter``: only the data-filter pipeline, with its stats table.

Same data, tokenizer, teacher and ``data/filters`` settings as the ``distill-train`` run that will
use the result, so that run finds the filtered dataset in the cache and starts training at once.
Writes ``filter_stats.json`` to the run dir and prints the table.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from distill.data.filters.summary import print_table
from distill.errors import DistillError
from distill.run.checks import teacher_kind
from distill.run.data import load_data, run_data_filters
from distill.run.setup import seed, setup_run
from distill.run.teacher import resolve_teacher

log = logging.getLogger(__name__)


def run_filters(cfg: DictConfig) -> dict:
    setup_run(cfg, "filter")
    teacher_kind(cfg)
    dm = instantiate(cfg.data)
    if not dm.filters:
        raise DistillError("distill-filter: no filters configured: choose some, e.g. data/filters=[code,dedup]")
    seed(cfg)
    load_data(cfg, dm)
    teacher = resolve_teacher(cfg, dm, for_training=False)  # weights only if a filter scores with them
    stats = run_data_filters(cfg, dm, teacher, require_kept=False)  # saved and shown even if nothing is kept
    print_table(stats)
    log.info("filter stats: %s", Path(cfg.paths.output_dir) / "filter_stats.json")
    if stats["kept"] == 0:  # reported above, and an error: a training run on this would have no data
        raise DistillError(f"the filters dropped every training document ({stats['input']} in): loosen data/filters")
    return stats
