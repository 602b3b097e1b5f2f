"""The body of ``distill-filter``: only the data-filter pipeline, with its stats table.

Same data, tokenizer, teacher and ``data/filters`` settings as the ``distill-train`` run that will
use the result, so that run finds the filtered dataset in the cache and starts training at once.
Writes ``filter_stats.json`` to the run dir and prints the table.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from distill.data.filters.summary import print_table
from distill.errors import DistillError
from distill.pipeline import run_data_filters

log = logging.getLogger(__name__)


def run_filters(cfg: DictConfig) -> dict:
    from hydra.utils import instantiate

    dm = instantiate(cfg.data)
    if not dm.filters:
        raise DistillError("distill-filter: no filters configured: choose some, e.g. data/filters=[code,dedup]")
    dm.load_documents()
    dm.use_tokenizer(cfg.teacher.get("path") or dm.train_tokenizer())
    stats = run_data_filters(cfg, dm, require_kept=False)  # the stats are saved and shown even if nothing is kept
    print_table(stats)
    log.info("filter stats: %s", Path(cfg.paths.output_dir) / "filter_stats.json")
    if stats["kept"] == 0:  # reported above, and an error: a training run on this would have no data
        raise DistillError(f"the filters dropped every training document ({stats['input']} in): loosen data/filters")
    return stats
