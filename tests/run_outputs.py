"""Reading a finished run dir as a user would: metrics.json, the CSV logger's columns and the exported student."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from safetensors.torch import load_file
from torch import Tensor


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def logged(run_dir: Path) -> dict[str, list[float]]:
    """Every column of the CSV logger's metrics.csv with its logged (non-empty) values, in step order."""
    [path] = run_dir.glob("csv/**/metrics.csv")
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return {column: [float(row[column]) for row in rows if row[column] != ""] for column in rows[0]}


def assert_terms_active(run_dir: Path, *terms: str) -> None:
    """Each loss term took part in training: logged, finite at every logged step, non-zero at some."""
    columns = logged(run_dir)
    for term in terms:
        values = columns.get(f"train/{term}")
        assert values, f"train/{term} was never logged (columns: {sorted(columns)})"
        assert all(math.isfinite(v) for v in values), (term, values)
        assert any(v != 0 for v in values), f"train/{term} stayed 0: the term never contributed"


def exported_config(model_dir: Path) -> dict:
    """A Hugging Face model dir's config.json (the student's or the teacher's)."""
    return json.loads((model_dir / "config.json").read_text())


def exported_weights(model_dir: Path) -> dict[str, Tensor]:
    return load_file(model_dir / "model.safetensors")
