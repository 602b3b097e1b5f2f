"""The body of ``distill-filter``: only the data-filter pipeline, with its stats table.

Same data, tokenizer, teacher and ``data/filters`` settings as the ``distill-train`` run that will
use the result, so that run finds the filtered dataset in the cache and starts training at once.
Writes ``filter_stats.json`` to the run dir and prints the table.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from distill.data.filters.summary import print_table
from distill.errors import DistillError
from distill.pipeline import filters_need_teacher, prepare_teacher, teacher_backend, write_atomic, device_of

log = logging.getLogger(__name__)


def run_filters(cfg: DictConfig) -> dict:
    from hydra.utils import instantiate

    dm = instantiate(cfg.data)
    if not dm.filters:
        raise DistillError("distill-filter: no filters configured: choose some, e.g. data/filters=[code,dedup]")
    dm.load_documents()
    dm.use_tokenizer(cfg.teacher.get("path") or dm.train_tokenizer())
    teacher_path = cfg.teacher.get("path")
    if teacher_path is None and filters_need_teacher(dm.filters) and teacher_backend(cfg) != "none":
        dm.setup("fit")  # a from-scratch teacher trains on the packed (unfiltered) data
        teacher_path = prepare_teacher(cfg, dm, len(dm.tokenizer))[0].name_or_path
    stats = dm.apply_filters(teacher_path=teacher_path, device=device_of(cfg), require_kept=False)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "filter_stats.json", json.dumps(stats, indent=2) + "\n")
    print_table(stats)
    log.info("filter stats: %s", out / "filter_stats.json")
    if stats["kept"] == 0:  # reported above, and an error: a training run on this would have no data
        raise DistillError(f"the filters dropped every training document ({stats['input']} in): loosen data/filters")
    return stats
