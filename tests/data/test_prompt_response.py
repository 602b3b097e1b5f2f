"""Prompt/response data for black-box distillation: reading, masking, truncation, split, cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.data import prompt_response as pr
from distill.data.prompt_response import (
    IGNORE_INDEX,
    MaskedBlockDataset,
    build_rows,
    from_prompt_response_files,
    prompt_response_examples,
    split_examples,
)
from distill.errors import DistillError

# 3 prompts are asked twice (with different answers): the split must keep each prompt on one side.
RECORDS = [
    {"prompt": f"What is {i % 21} plus {i % 21}?", "response": f"The answer is {2 * (i % 21)}.", "id": i}
    for i in range(24)
]
SMALL = dict(vocab_size=300, seq_len=24, batch_size=4, val_fraction=0.2, seed=0, max_val_blocks=8)


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _write_parquet(path: Path, records: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path)
    return path


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return _write_jsonl(tmp_path_factory.mktemp("pr-data") / "pairs.jsonl", RECORDS)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pr-cache")


def _prepared(data_file: Path, cache: Path, **overrides) -> pr.PromptResponseDataModule:
    dm = from_prompt_response_files([str(data_file)], cache_dir=str(cache), **{**SMALL, **overrides})
    dm.load_documents()
    dm.use_tokenizer(dm.train_tokenizer())
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def dm(data_file, cache):
    return _prepared(data_file, cache)


# -- reading ------------------------------------------------------------------------------------------------


def test_jsonl_parquet_and_saved_dataset_read_the_same(tmp_path):
    import datasets

    jsonl = _write_jsonl(tmp_path / "a.jsonl", RECORDS[:5])
    parquet = _write_parquet(tmp_path / "a.parquet", RECORDS[:5])
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(RECORDS[:5]).save_to_disk(str(saved))
    want = [(r["prompt"], r["response"]) for r in RECORDS[:5]]
    for path in (jsonl, parquet, saved):
        got = prompt_response_examples([str(path)])
        assert [(e.prompt, e.response) for e in got] == want, path
        assert len({e.id for e in got}) == 5 and all(str(path) in e.id for e in got)
    renamed = _write_jsonl(tmp_path / "b.jsonl", [{"q": r["prompt"], "a": r["response"]} for r in RECORDS[:2]])
    assert [(e.prompt, e.response) for e in prompt_response_examples(str(renamed), "q", "a")] == want[:2]


def test_bad_rows_are_one_line_errors_with_their_location(tmp_path):
    jsonl = _write_jsonl(tmp_path / "bad.jsonl", [RECORDS[0], {"prompt": "hi"}])
    with pytest.raises(DistillError, match=r"bad\.jsonl:2: record has no field 'response'") as e:
        prompt_response_examples([str(jsonl)])
    assert "\n" not in str(e.value)
    parquet = _write_parquet(tmp_path / "bad.parquet", [RECORDS[0], {**RECORDS[1], "response": None}])
    with pytest.raises(DistillError, match=r"bad\.parquet row 1: field 'response' is NoneType, not a string"):
        prompt_response_examples([str(parquet)])
    with pytest.raises(DistillError, match=r"no column 'question'.*set data.prompt_field"):
        prompt_response_examples([str(parquet)], prompt_field="question")
    with pytest.raises(DistillError, match="JSONL, Parquet or a save_to_disk"):
        prompt_response_examples([str(_write_jsonl(tmp_path / "x.txt", RECORDS[:1]))])


def test_template_is_checked():
    for bad in ("{instruction}\n", "no field", "{prompt"):
        with pytest.raises(DistillError, match="data.template"):
            from_prompt_response_files(["x"], template=bad)


# -- rows and targets ---------------------------------------------------------------------------------------


def test_targets_are_the_response_and_eos_only():
    rows, targets, stats = build_rows([[5, 6, 7]], [[8, 9]], seq_len=8, eos_id=0, pad_id=0)
    assert rows.tolist() == [[5, 6, 7, 8, 9, 0, 0, 0, 0]]
    assert targets.tolist() == [[-100, -100, 8, 9, 0, -100, -100, -100]]  # padding is EOS-valued but ignored
    rows, targets, _ = build_rows([[5]], [[8]], seq_len=4, eos_id=0, pad_id=1, bos_id=2)
    assert rows.tolist() == [[2, 5, 8, 0, 1]] and targets.tolist() == [[-100, 8, 0, -100]]
    assert stats == {"examples": 1, "kept": 1, "skipped": 0, "truncated": 0}


def test_truncation_keeps_partial_responses_and_skips_empty_ones():
    prompts = [[1] * 4, [1] * 5, [1] * 6, [1]]
    rows, targets, stats = build_rows(prompts, [[8, 9, 9]] * 4, seq_len=4, eos_id=0, pad_id=0)
    # width 5: a 4-token prompt leaves one response token; 5 or 6 leave none
    assert stats == {"examples": 4, "kept": 2, "skipped": 2, "truncated": 1}
    assert targets.tolist() == [[-100, -100, -100, 8], [8, 9, 9, 0]]


def test_datamodule_rows_mask_prompt_and_padding(dm):
    tok = dm.tokenizer
    eos = tok.eos_token_id
    assert dm.train_blocks.shape[1] == SMALL["seq_len"] + 1 and dm.train_targets.shape[1] == SMALL["seq_len"]
    for split, rows, targets in (("train", dm.train_blocks, dm.train_targets), ("val", dm.val_blocks, dm.val_targets)):
        examples = dm.train_examples if split == "train" else dm.val_examples
        for ex, row, tgt in zip(examples, rows, targets):  # nothing skipped at seq_len 24: rows follow examples
            p = tok(ex.prompt + "\n", add_special_tokens=False)["input_ids"]
            r = tok(ex.response, add_special_tokens=False)["input_ids"]
            want = np.full(SMALL["seq_len"], IGNORE_INDEX)
            want[len(p) - 1 : len(p) + len(r)] = r + [eos]
            assert tgt.tolist() == want.tolist()
            assert row[: len(p) + len(r) + 1].tolist() == p + r + [eos]
    assert dm.stats["train"]["skipped"] == dm.stats["val"]["skipped"] == 0


def test_loader_batches_keep_the_block_contract(dm):
    batches = list(dm.train_dataloader())
    assert len(batches) == len(dm.train_blocks) // SMALL["batch_size"]
    inputs, targets, rows = batches[0]
    assert inputs.shape == targets.shape == (SMALL["batch_size"], SMALL["seq_len"]) and inputs.dtype == torch.int64
    assert torch.equal(inputs, torch.from_numpy(dm.train_blocks[rows.numpy(), :-1]).long())
    assert torch.equal(targets, torch.from_numpy(dm.train_targets[rows.numpy()]).long())
    assert torch.equal(next(iter(dm.train_dataloader()))[0], inputs)  # seeded shuffle
    with pytest.raises(ValueError):
        MaskedBlockDataset(dm.train_blocks, dm.train_targets[:, :-1])


def test_too_short_seq_len_skips_and_says_so(data_file, cache, caplog):
    with pytest.raises(DistillError, match="skipped because the prompt fills data.seq_len=3"):
        _prepared(data_file, cache, seq_len=3)
    assert "leaving no response token" in caplog.text


# -- split and cache ----------------------------------------------------------------------------------------


def test_split_is_by_prompt_and_seeded(dm):
    train, val = dm.train_examples, dm.val_examples
    assert len(train) + len(val) == len(RECORDS) and val
    assert not {e.id for e in train} & {e.id for e in val}
    assert not {e.prompt for e in train} & {e.prompt for e in val}
    again = split_examples(prompt_response_examples([e.id.rsplit(":", 1)[0] for e in train[:1]]), 0.2, 0)
    assert [e.id for e in again[1]] == [e.id for e in val]


def test_second_setup_reads_the_cache(dm, data_file, cache, monkeypatch):
    entries = sorted((cache / "prompt_response").iterdir())

    def no_build(self, tmp):
        raise AssertionError("tokenized again instead of read from the cache")

    monkeypatch.setattr(pr.PromptResponseDataModule, "_build", no_build)
    fresh = _prepared(data_file, cache)
    assert sorted((cache / "prompt_response").iterdir()) == entries
    assert np.array_equal(fresh.train_blocks, dm.train_blocks) and np.array_equal(fresh.val_targets, dm.val_targets)
    assert fresh.stats == dm.stats
    with pytest.raises(AssertionError, match="tokenized again"):  # the template is part of the key
        _prepared(data_file, cache, template="Q: {prompt}\nA: ")


# -- config -------------------------------------------------------------------------------------------------


def test_config_composes_with_smoke(data_file, tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from distill.cli.resolvers import register

    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "cache"))
    register()
    configs = Path(__file__).resolve().parents[2] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "experiment=smoke",
                "data=prompt_response",
                f"data.paths=[{data_file}]",
                "data.prompt_field=prompt",
                "data.template='Q: {prompt} A: '",
            ],
        )
    dm = instantiate(cfg.data)
    assert isinstance(dm, pr.PromptResponseDataModule)
    assert dm.seq_len == 64 and dm.template == "Q: {prompt} A: " and dm.cache_dir == str(tmp_path / "cache")
    dm.load_documents()
    assert len(dm.train_examples) + len(dm.val_examples) == len(RECORDS)  # smoke's max_docs: 40 > 24
