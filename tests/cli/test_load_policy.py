"""The load policy holds in every CLI (one shared setup, ``distill/run/setup.py``): pickle-only
weights are refused unless ``allow_pickle=true``, and a model directory's own code (``auto_map``)
never runs unless ``trust_remote_code=true``."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.cli.helpers import save_random_model
from tests.conftest import run_cli

pytestmark = pytest.mark.cli

# distill-cache's config already selects teacher=cache; filter needs a filter to run
CLIS = {
    "distill-prune": [],
    "distill-cache": [],
    "distill-filter": ["data/filters=[code]"],
    "distill-train": ["trainer.max_steps=2", "control=false"],
}


@pytest.fixture(scope="module")
def teacher(byo, tmp_path_factory):
    return save_random_model(tmp_path_factory.mktemp("policy") / "teacher", "llama", byo["tok_a"])


@pytest.fixture(scope="module")
def pickled(teacher, tmp_path_factory):
    """The same teacher with only ``pytorch_model.bin`` (a pickle)."""
    out = shutil.copytree(teacher, tmp_path_factory.mktemp("pickled") / "teacher")
    torch.save(load_file(out / "model.safetensors"), out / "pytorch_model.bin")
    (out / "model.safetensors").unlink()
    return out


@pytest.fixture(scope="module")
def remote_code(teacher, tmp_path_factory):
    """The same teacher whose config names its own code (``auto_map``): importing that code leaves a
    marker file, so a test sees whether it ever ran."""
    out = shutil.copytree(teacher, tmp_path_factory.mktemp("remote") / "teacher")
    marker = out.parent / "code_ran"
    (out / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class EvilConfig(LlamaConfig):\n    pass\n"
        "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n"
    )
    config = json.loads((out / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (out / "config.json").write_text(json.dumps(config))
    return out, marker


def _args(prog: str, teacher, byo, out) -> list[str]:
    data = ["data=files", f"data.paths=[{byo['data']}]", "data.text_field=content"]
    if prog == "distill-eval":
        return [
            "experiment=smoke",
            *data,
            f"models=[{teacher}]",
            f"hydra.run.dir={out}",
            "speed.rounds=1",
            "speed.batches=1",
            "speed.new_tokens=2",
            "generation.max_new_tokens=2",
        ]
    # the cache goes under the run dir: the session's shared cache holds the smoke cache other tests read
    own_cache = [f"teacher.cache_dir={out}/teacher_cache"] if prog == "distill-cache" else []
    return ["experiment=smoke", f"teacher.path={teacher}", *data, f"hydra.run.dir={out}", *CLIS[prog], *own_cache]


def _refused(proc, prog: str) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert lines[-1].startswith(f"{prog}: error:"), lines[-1]
    return lines[-1]


@pytest.mark.parametrize("prog", [*CLIS, "distill-eval"])
def test_pickle_only_weights_are_refused_by_every_cli(prog, pickled, byo, cache_dir, tmp_path):
    proc = run_cli(_args(prog, pickled, byo, tmp_path / "run"), cache_dir, prog=prog)
    line = _refused(proc, prog)
    assert "only pickle weights (pytorch_model.bin)" in line and "allow_pickle=true" in line


@pytest.mark.slow
@pytest.mark.parametrize("prog", ["distill-prune", "distill-filter", "distill-eval"])
def test_allow_pickle_lets_every_cli_load_them(prog, pickled, byo, cache_dir, tmp_path):
    out = tmp_path / "run"
    proc = run_cli([*_args(prog, pickled, byo, out), "allow_pickle=true"], cache_dir, prog=prog)
    assert proc.returncode == 0, proc.stderr[-2000:]
    produced = {
        "distill-prune": "pruning_report.json",
        "distill-filter": "filter_stats.json",
        "distill-eval": "eval.json",
    }[prog]
    assert (out / produced).is_file()


@pytest.mark.slow  # each command runs to its end on the plain Llama
@pytest.mark.parametrize("prog", [*CLIS, "distill-eval"])
def test_a_model_dirs_own_code_never_runs(prog, remote_code, byo, cache_dir, tmp_path):
    teacher, marker = remote_code
    proc = run_cli(_args(prog, teacher, byo, tmp_path / "run"), cache_dir, prog=prog)
    assert not marker.exists(), f"{prog} ran the model directory's own code"
    # without that code the directory is still a plain Llama: the command works (or fails in one line)
    assert proc.returncode in (0, 2), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
