"""Greedy-answer metrics for a finished instruct run whose metrics.json lacks them (a run started
before distill computed them): the run's teacher (from its train.log) and exported student answer the
held-out prompts of data=stdlib_instruct; written to <run>/answers.json, read by summarize.py.

    python experiments/instruct/answers.py experiments/instruct/runs/forward_kl_seed0
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from distill.data.chat.datamodule import from_stdlib_instruct
from distill.eval.answers import answer_metrics
from distill.teacher.load import load_causal_lm


def main(run: Path) -> None:
    metrics = json.loads((run / "metrics.json").read_text())
    if "student.answer_compile_rate" in metrics or (run / "answers.json").exists():
        return
    teacher = re.findall(r"teacher: (\S+/teachers/\w+)", (run / "train.log").read_text())[-1]
    config = json.loads((run / "run_info.json").read_text())["config"]["data"]
    dm = from_stdlib_instruct(seq_len=config["seq_len"], max_val_blocks=config["max_val_blocks"], seed=config["seed"])
    dm.load_documents()
    dm.use_tokenizer(run / "student")
    dm.setup()
    models = {"teacher": load_causal_lm(teacher), "student": load_causal_lm(run / "student")}
    (run / "answers.json").write_text(json.dumps(answer_metrics(models, dm, "cpu"), indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
