"""The local lm-evaluation-harness tasks: data and YAML the harness can read, nothing downloaded."""

from __future__ import annotations

import json

from distill.eval.lm_eval_task import CHOICES, CONTEXT_LINES, lm_eval_command, next_line_docs, read_results, write_tasks

TEXTS = ["\n".join(f"    value_{d}_{i} = compute_{d}({i}, other)" for i in range(20)) for d in range(4)]


def test_next_line_items_hold_the_real_line_among_lines_of_other_files():
    items = next_line_docs(TEXTS, max_items=10, seed=0)
    assert len(items) == 10
    for item in items:
        context = item["context"].splitlines()
        assert len(context) == CONTEXT_LINES and len(item["choices"]) == CHOICES
        answer = item["choices"][item["label"]]
        doc = next(t.splitlines() for t in TEXTS if context[0] in t.splitlines())
        assert doc[doc.index(context[-1]) + 1] == answer  # the line that really follows the context
        others = [c for i, c in enumerate(item["choices"]) if i != item["label"]]
        assert all(c not in doc for c in others)  # distractors come from other files
    assert len({i["label"] for i in items}) > 1  # the answer is not always in the same place
    assert next_line_docs(TEXTS, 10, seed=0) == items  # seeded


def test_write_tasks_writes_data_and_task_configs(tmp_path):
    tasks = write_tasks(TEXTS, tmp_path, prefix="t", max_docs=3, max_chars=50, max_items=5)
    assert tasks == ["t_ppl", "t_next_line"]
    ppl = [json.loads(line) for line in (tmp_path / "t_ppl.jsonl").read_text().splitlines()]
    assert [d["text"] for d in ppl] == [t[:50] for t in TEXTS[:3]]
    spec = json.loads((tmp_path / "t_next_line.yaml").read_text())  # JSON is valid YAML
    assert spec["task"] == "t_next_line" and spec["output_type"] == "multiple_choice"
    assert spec["dataset_kwargs"]["data_files"]["test"] == str((tmp_path / "t_next_line.jsonl").resolve())
    cmd = lm_eval_command(tmp_path / "m", tasks, tmp_path, tmp_path / "out")
    assert cmd[:3] == ["lm_eval", "--model", "hf"] and "t_ppl,t_next_line" in cmd


def test_read_results_takes_the_newest_file(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "results_1.json").write_text(
        json.dumps(
            {"results": {"t_ppl": {"alias": "t_ppl", "bits_per_byte,none": 2.0, "bits_per_byte_stderr,none": "N/A"}}}
        )
    )
    assert read_results(tmp_path) == {"t_ppl": {"bits_per_byte": 2.0}}
    assert read_results(tmp_path / "empty") == {}
