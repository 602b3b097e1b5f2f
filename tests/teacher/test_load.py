"""A model dir that ships its own Python code never runs it unless trust_remote_code is set."""

import json

import pytest

from distill import safety
from distill.student.scratch import build_llama
from distill.teacher.load import check_model_dir, load_causal_lm


@pytest.fixture
def model_with_code(tmp_path):
    build_llama(vocab_size=40, hidden_size=32, num_layers=1, num_heads=2, eos_token_id=0).save_pretrained(tmp_path)
    marker = tmp_path / "code_ran"
    (tmp_path / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('yes')\n"
        "from transformers import LlamaConfig\nclass EvilConfig(LlamaConfig):\n    pass\n"
    )
    config = json.loads((tmp_path / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    yield tmp_path, marker
    safety.set_load_policy()


def test_repository_code_does_not_run_by_default(model_with_code):
    path, marker = model_with_code
    safety.set_load_policy()
    check_model_dir(path)
    load_causal_lm(path)
    assert not marker.exists()


def test_trust_remote_code_runs_it(model_with_code):
    path, marker = model_with_code
    safety.set_load_policy(trust_remote_code=True)
    check_model_dir(path)
    assert marker.exists()
