"""Quantization presets through distill-train, as a user runs them: QAT, its PTQ baseline, QLoRA,
a quantized live teacher, the one-line errors they raise before training, and resume.

The plugins' own behaviour (fake quant, packing, bitsandbytes layers) is unit-tested in
tests/plugins/; here each test checks what the pipeline does with them. Runs are smoke size
(a 1-layer, 64-wide student; hidden 64 and MLP 192 are the widths that matter for group sizes
and bitsandbytes' multiples of 64), control=false, and shared through module-scoped fixtures.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from tests.conftest import REPO, run_cli

CONFIG_DIR = REPO / "configs"
PRESETS = sorted(p.stem for p in (CONFIG_DIR / "quant").glob("*.yaml"))
SMOKE = ["experiment=smoke", "control=false"]
# the smoke student (every other layer of the 2-layer smoke teacher): one decoder layer, 7 linears
BLOCK_LINEARS = [
    f"model.layers.0.{m}"
    for m in (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    )
]
WIDE_INPUT = {"model.layers.0.mlp.down_proj"}  # in_features 192; every other block linear takes 64


# -- helpers ------------------------------------------------------------------------


def train_run(out: Path, cache: Path, *args: str) -> Path:
    proc = run_cli([*SMOKE, f"hydra.run.dir={out}", *args], cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def metrics_of(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def report_section(run: Path) -> str:
    """The "## Quantization and memory" section of report.md (up to the next heading or image)."""
    report = (run / "report.md").read_text()
    assert "## Quantization and memory" in report
    section = report.split("## Quantization and memory", 1)[1]
    return re.split(r"\n(?:#|!\[)", section, maxsplit=1)[0]


def checkpoint_student(run: Path):
    """The student exactly as last saved by the trainer (the full-precision weights it trained)."""
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")["state_dict"]
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(run / "student"))
    model.load_state_dict({k.removeprefix("student."): v for k, v in state.items()})
    return model.eval()


def exported(run: Path):
    return AutoModelForCausalLM.from_pretrained(run / "student").eval()


def max_levels_per_group(weight: torch.Tensor, group: int) -> int:
    """The most distinct values in any group of ``group`` consecutive input channels: at most
    2**bits for weights on a symmetric ``bits``-bit grid with one scale per group."""
    groups = weight.detach().reshape(-1, group)
    return max(len(torch.unique(g)) for g in groups)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def sample_ids(vocab: int = 512) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 48), generator=torch.Generator().manual_seed(0))


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def one_line_error(proc, out: Path) -> str:
    """A user error: exit 2, a single ``distill-train: error:`` line last, no traceback, no outputs."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert lines and lines[-1].startswith("distill-train: error:"), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert sum("distill-train: error:" in ln for ln in lines) == 1
    for name in ("metrics.json", "checkpoints", "student", "packed"):
        assert not (out / name).exists(), name
    return lines[-1]


def no_training(proc) -> None:
    """Neither the student nor (cached) the teacher was fitted: no Trainer ran at all."""
    output = proc.stdout + proc.stderr
    assert "Trainer.fit" not in output and "Epoch 0" not in output
    assert "training the teacher from scratch" not in output


# -- every preset composes and instantiates (no training) ---------------------------


def compose_train(*overrides: str):
    from distill.cli.resolvers import register

    register()  # ${auto_precision:...}
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


QAT_PRESETS = {"qat_int8_int4": 4, "qat_int8": 8, "qat_int8_int2": 2, "ptq_int8_int4": 4, "ptq_int8_int2": 2}
# llama.cpp's formats (distill/quant/ggml_qat.py; tested in tests/quant/test_ggml_qat.py and tests/export)
GGML_PRESETS = {
    f"{kind}_{name}": t for kind in ("qat", "ptq") for name, t in (("q4_0",) * 2, ("q8_0",) * 2, ("ternary", "tq2_0"))
}


def test_the_presets_are_the_documented_ones():
    assert set(PRESETS) == {"none", "qlora", *QAT_PRESETS, *GGML_PRESETS}


@pytest.mark.parametrize("experiment", ["quickstart", "smoke"])
@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_into_its_plugin(name, experiment):
    from distill.quant.ptq import PTQPlugin
    from distill.quant.qat import QATPlugin
    from distill.quant.qlora import QLoRAPlugin

    cfg = compose_train(f"experiment={experiment}", f"quant={name}")
    plugin = plugin_of(cfg)
    if name == "none":
        assert plugin is None
        assert cfg.student.lora.r == 0
        return
    # wraps the trainer's own precision rather than replacing it
    assert plugin.precision == cfg.trainer.precision
    assert plugin.name == name  # the name the memory estimate, metrics and report use, before any training
    if name == "qlora":
        assert type(plugin) is QLoRAPlugin and plugin.finalize_before_merge
        assert (plugin.quant_type, plugin.double_quant, plugin.compute_dtype, plugin.export) == (
            "nf4",
            True,
            "bfloat16",
            "merged",
        )
        assert cfg.student.lora.r == 16  # QLoRA turns LoRA on
        return
    if name in GGML_PRESETS:
        from distill.quant.ggml_qat import GGMLPTQPlugin, GGMLQATPlugin

        assert type(plugin) is (GGMLPTQPlugin if name.startswith("ptq_") else GGMLQATPlugin)
        assert (plugin.gguf_type, plugin.embeddings) == (GGML_PRESETS[name], "f16")
        return
    assert type(plugin) is (PTQPlugin if name.startswith("ptq_") else QATPlugin)
    assert not plugin.finalize_before_merge
    assert plugin.scheme.weight_bits == QAT_PRESETS[name]
    assert (plugin.scheme.group_size, plugin.scheme.activations) == (32, "int8")
    assert (plugin.skip_indivisible, plugin.quantize_embeddings, plugin.quantize_lm_head) == (False, False, False)
    assert cfg.student.lora.r == 0  # QAT/PTQ train every weight


def test_qlora_keeps_a_rank_given_on_the_command_line():
    assert compose_train("quant=qlora", "student.lora.r=8").student.lora.r == 8
    assert compose_train("quant=qlora", "student.lora.r=0").student.lora.r == 0  # refused at run time


def plugin_of(cfg):
    from distill.quant.config import quant_plugin

    return quant_plugin(cfg.get("quant"), cfg.trainer.precision, "cpu")


def test_preset_overrides_reach_the_plugin():
    plugin = plugin_of(compose_train("quant=qat_int8_int4", "quant.group_size=64", "quant.skip_indivisible=true"))
    assert plugin.scheme.group_size == 64 and plugin.skip_indivisible
    assert plugin_of(compose_train("quant=qlora", "quant.export=adapters")).export == "adapters"


@pytest.mark.parametrize(
    "load_in, expected", [("null", None), ("fp32", "fp32"), ("bf16", "bf16"), ("8bit", "8bit"), ("4bit", "4bit")]
)
def test_teacher_load_in_composes(load_in, expected):
    from distill.quant.memory import LOAD_BYTES
    from distill.quant.quantized_teacher import LOAD_IN

    for extra in ([], ["quant=qlora"], ["quant=qat_int8_int4"]):
        cfg = compose_train("experiment=smoke", f"teacher.load_in={load_in}", *extra)
        assert cfg.teacher.backend == "live"
        assert cfg.teacher.load_in == expected
    if expected is not None:  # accepted by the teacher quantizer and by the memory estimate alike
        assert expected in LOAD_IN and expected in LOAD_BYTES


# -- QAT int8/int4 end to end -------------------------------------------------------


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory, cache_dir) -> Path:
    return train_run(tmp_path_factory.mktemp("qat_int8_int4"), cache_dir, "quant=qat_int8_int4")


@pytest.mark.slow
@pytest.mark.cli
def test_qat_metrics_and_report(qat_run):
    m = metrics_of(qat_run)
    q = m["quant"]
    assert q["quant"] == "qat_int8_int4" and q["weight_bits"] == 4
    assert (q["group_size"], q["activations"]) == (32, "int8")
    assert q["quantized_layers"] == len(BLOCK_LINEARS) and q["skipped"] == {} and q["embeddings"] == []
    # both exports measured on disk, the packed one much smaller than the fp32 HF one
    assert m["quant.packed_bytes"] == dir_bytes(qat_run / "packed")
    assert m["quant.hf_bytes"] == dir_bytes(qat_run / "student")
    assert 0 < m["quant.packed_bytes"] < m["quant.hf_bytes"] / 2
    assert m["memory.estimate_bytes"] > 0 and m["train.peak_rss_bytes"] > 0 and "train.rss_growth_bytes" in m
    assert m["train.tokens"] == 20 * 4 * 64
    section = report_section(qat_run)
    assert "- student quantization: `qat_int8_int4`, 7 layers quantized" in section
    assert "packed low-bit checkpoint" in section and "HF export" in section
    assert "training memory: estimated" in section and "resident memory grew" in section
    assert "left in full precision" not in section


@pytest.mark.slow
@pytest.mark.cli
def test_qat_packed_checkpoint_reloads_as_the_exported_student(qat_run):
    from distill.quant.export import load_packed

    manifest = json.loads((qat_run / "packed" / "quantization.json").read_text())
    assert (manifest["bits"], manifest["group_size"]) == (4, 32)
    assert sorted(manifest["quantized"]) == sorted(f"{n}.weight" for n in BLOCK_LINEARS)
    packed = load_packed(qat_run / "packed", config_dir=qat_run / "student")
    hf = exported(qat_run)
    for name in BLOCK_LINEARS:  # the quantized weights round-trip exactly (int x fp16 scale)
        assert torch.equal(packed.get_submodule(name).weight, hf.get_submodule(name).weight), name
    ids = sample_ids(hf.config.vocab_size)
    a, b = logits(hf, ids), logits(packed, ids)
    # the rest (embedding/tied head, norms) is stored in bf16 in the packed checkpoint
    torch.testing.assert_close(b, a, atol=0.05, rtol=0.02)
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.9


@pytest.mark.slow
@pytest.mark.cli
def test_qat_export_is_the_trained_weights_on_the_int4_grid(qat_run):
    from distill.quant.qat import QATPlugin

    hf, trained = exported(qat_run), checkpoint_student(qat_run)
    for name in BLOCK_LINEARS:
        assert max_levels_per_group(hf.get_submodule(name).weight, 32) <= 16, name
        # QAT keeps full-precision master weights: the checkpoint is not on the grid
        assert max_levels_per_group(trained.get_submodule(name).weight, 32) > 16, name
    embed = hf.get_input_embeddings().weight
    assert max_levels_per_group(embed, 32) > 16  # embeddings (and the tied head) stay full precision
    # the export is exactly the final trained weights converted
    plugin = QATPlugin(weight_bits=4, group_size=32, activations="int8")
    plugin.quantize(trained)
    final = plugin.finalize(trained)
    for key, value in hf.state_dict().items():
        assert torch.equal(value, final.state_dict()[key]), key


# -- PTQ int8/int4 and QAT int8/int2 ------------------------------------------------


@pytest.fixture(scope="module")
def ptq_run(tmp_path_factory, cache_dir) -> Path:
    return train_run(tmp_path_factory.mktemp("ptq_int8_int4"), cache_dir, "quant=ptq_int8_int4")


@pytest.mark.slow
@pytest.mark.cli
def test_ptq_runs_and_reports_its_name(ptq_run):
    m = metrics_of(ptq_run)
    assert m["quant"]["quant"] == "ptq_int8_int4" and m["quant"]["weight_bits"] == 4
    assert m["quant"]["quantized_layers"] == len(BLOCK_LINEARS)
    assert 0 < m["quant.packed_bytes"] < m["quant.hf_bytes"]
    assert "- student quantization: `ptq_int8_int4`, 7 layers quantized" in report_section(ptq_run)
    assert (ptq_run / "packed" / "quantized.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.cli
def test_ptq_trains_without_fake_quant_and_rounds_at_the_end(ptq_run, qat_run, smoke_run):
    from distill.quant.ptq import ptq_rtn
    from distill.quant.qat import dequantized_copy

    trained = checkpoint_student(ptq_run)
    # training is the unquantized run's, step for step (same seed and data, deterministic on CPU) ...
    plain = checkpoint_student(smoke_run).state_dict()
    for key, value in trained.state_dict().items():
        assert torch.equal(value, plain[key]), key
    # ... which QAT's is not (its forward saw the fake-quantized weights)
    qat = checkpoint_student(qat_run).state_dict()
    assert any(not torch.equal(v, qat[k]) for k, v in trained.state_dict().items())
    # the export is round-to-nearest of the trained weights, in QAT's scheme
    hf = exported(ptq_run)
    rtn = dequantized_copy(ptq_rtn(trained, 4, 32, "int8"))
    for key, value in hf.state_dict().items():
        assert torch.equal(value, rtn.state_dict()[key]), key
    for name in BLOCK_LINEARS:
        assert max_levels_per_group(hf.get_submodule(name).weight, 32) <= 16, name


@pytest.mark.slow
@pytest.mark.cli
def test_ptq_memory_estimate_has_no_fake_quant_copies(ptq_run, qat_run):
    """QAT saves a fake-quantized copy of each linear weight for backward; PTQ trains without one."""
    student = exported(qat_run)
    linear_bytes = sum(student.get_submodule(n).weight.numel() * 4 for n in BLOCK_LINEARS)
    difference = metrics_of(qat_run)["memory.estimate_bytes"] - metrics_of(ptq_run)["memory.estimate_bytes"]
    assert difference == pytest.approx(linear_bytes)


@pytest.mark.slow
@pytest.mark.cli
def test_qat_int2(tmp_path, cache_dir):
    run = train_run(tmp_path, cache_dir, "quant=qat_int8_int2")
    m = metrics_of(run)
    assert m["quant"]["quant"] == "qat_int8_int2" and m["quant"]["weight_bits"] == 2
    manifest = json.loads((run / "packed" / "quantization.json").read_text())
    assert manifest["bits"] == 2
    hf = exported(run)
    for name in BLOCK_LINEARS:
        assert max_levels_per_group(hf.get_submodule(name).weight, 32) <= 4, name
    # int2 packs four weights per byte
    n_weights = sum(hf.get_submodule(n).weight.numel() for n in BLOCK_LINEARS)
    packed = load_file(run / "packed" / "quantized.safetensors")
    assert sum(v.numel() for k, v in packed.items() if k.endswith(".qweight")) == n_weights // 4
    assert 0 < m["quant.packed_bytes"] < m["quant.hf_bytes"]
    assert torch.isfinite(torch.tensor(m["student.val_ppl"]))


# -- group sizes that do not divide a width -----------------------------------------


@pytest.fixture(scope="module")
def warm_cache(qat_run, cache_dir) -> Path:
    """The smoke teacher is cached by then, so a run that fails before training fits nothing at all."""
    return cache_dir


@pytest.mark.slow
@pytest.mark.cli
@pytest.mark.parametrize("preset", ["qat_int8_int4", "ptq_int8_int4"])
def test_indivisible_group_size_fails_before_training(preset, warm_cache, tmp_path):
    proc = run_cli([*SMOKE, f"hydra.run.dir={tmp_path}", f"quant={preset}", "quant.group_size=48"], warm_cache)
    line = one_line_error(proc, tmp_path)
    assert "quant.group_size 48" in line and "skip_indivisible" in line
    assert "model.layers.0.self_attn.q_proj (in_features 64)" in line
    assert "down_proj" not in line  # 48 divides 192: only the 64-wide inputs are named
    no_training(proc)


@pytest.fixture(scope="module")
def skip_run(tmp_path_factory, warm_cache) -> Path:
    return train_run(
        tmp_path_factory.mktemp("qat_skip"),
        warm_cache,
        "quant=qat_int8_int4",
        "quant.group_size=48",
        "quant.skip_indivisible=true",
        "trainer.max_steps=5",
    )


@pytest.mark.slow
@pytest.mark.cli
def test_skip_indivisible_lists_the_layers_it_keeps(skip_run):
    m = metrics_of(skip_run)
    skipped = {n: 64 for n in BLOCK_LINEARS if n not in WIDE_INPUT}
    assert m["quant"]["skipped"] == skipped
    assert m["quant"]["quantized_layers"] == len(WIDE_INPUT)
    section = report_section(skip_run)
    assert "1 layers quantized" in section
    assert "left in full precision" in section and all(n in section for n in skipped)
    log = (skip_run / "train.log").read_text()
    assert "6 layer(s) kept in full precision" in log
    # the skipped layers are exported as trained, the other one on the int4 grid of 48-groups
    hf, trained = exported(skip_run), checkpoint_student(skip_run)
    for name in skipped:
        assert torch.equal(hf.get_submodule(name).weight, trained.get_submodule(name).weight), name
    (down,) = WIDE_INPUT
    assert max_levels_per_group(hf.get_submodule(down).weight, 48) <= 16
    manifest = json.loads((skip_run / "packed" / "quantization.json").read_text())
    assert manifest["group_size"] == 48 and list(manifest["quantized"]) == [f"{down}.weight"]


# -- QLoRA --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory, cache_dir) -> Path:
    return train_run(tmp_path_factory.mktemp("qlora"), cache_dir, "quant=qlora")


@pytest.mark.slow
@pytest.mark.cli
def test_qlora_exports_a_plain_hf_student(qlora_run):
    m = metrics_of(qlora_run)
    q = m["quant"]
    assert (q["quant"], q["quant_type"], q["double_quant"]) == ("qlora", "nf4", True)
    assert q["layers_quantized"] == len(BLOCK_LINEARS) and q["layers_skipped"] == []
    assert q["base_bytes_after"] < q["base_bytes_before"] / 4  # 4-bit codes + block scales vs fp32
    assert not (qlora_run / "adapters").exists() and not (qlora_run / "packed").exists()
    assert "quant.packed_bytes" not in m
    config = json.loads((qlora_run / "student" / "config.json").read_text())
    assert "quantization_config" not in config
    with safe_open(qlora_run / "student" / "model.safetensors", "pt") as f:
        keys = list(f.keys())
        assert all(f.get_tensor(k).dtype == torch.float32 for k in keys)
    assert not [k for k in keys if re.search(r"lora_|base_layer|absmax|quant_map|quant_state|nested", k)]
    model, info = AutoModelForCausalLM.from_pretrained(qlora_run / "student", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    foreign = {
        type(mod).__module__
        for mod in model.modules()
        if type(mod).__module__.split(".")[0] in ("bitsandbytes", "peft")
    }
    assert not foreign
    assert m["student.params"] == sum(p.numel() for p in model.parameters())  # no adapter params left
    assert "- student quantization: `qlora`, 7 layers quantized" in report_section(qlora_run)


@pytest.fixture(scope="module")
def qlora_adapters_run(tmp_path_factory, cache_dir) -> Path:
    return train_run(
        tmp_path_factory.mktemp("qlora_adapters"),
        cache_dir,
        "quant=qlora",
        "quant.export=adapters",
        "trainer.max_steps=5",
    )


@pytest.mark.slow
@pytest.mark.cli
def test_qlora_adapters_export_is_the_merged_students_delta(qlora_adapters_run):
    """adapters/ holds the trained LoRA weights; the exported student is the NF4 base they trained
    on (the pruned teacher's layer, never updated) plus those adapters, merged."""
    from distill.quant.qlora import dequantized_weight, to_linear4bit

    run = qlora_adapters_run
    adapters = run / "adapters"
    assert (adapters / "adapter_model.safetensors").is_file() and (adapters / "adapter_config.json").is_file()
    m = metrics_of(run)
    assert m["quant"]["quant"] == "qlora"
    adapter_config = json.loads((adapters / "adapter_config.json").read_text())
    assert adapter_config["r"] == 16
    scaling = adapter_config["lora_alpha"] / adapter_config["r"]
    lora = load_file(adapters / "adapter_model.safetensors")
    assert len(lora) == 2 * len(BLOCK_LINEARS)
    teacher_dir = re.search(r"\] - teacher: (\S+)", (run / "train.log").read_text()).group(1)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    hf = exported(run)
    for name in BLOCK_LINEARS:
        # every_other_layer keeps teacher layers 0, 2, ...: student layer 0 is teacher layer 0
        base = dequantized_weight(
            to_linear4bit(
                teacher.get_submodule(name), quant_type="nf4", double_quant=True, compute_dtype=torch.bfloat16
            )
        )
        a = lora[f"base_model.model.{name}.lora_A.weight"]
        b = lora[f"base_model.model.{name}.lora_B.weight"]
        assert b.abs().max() > 0, name  # the adapters trained
        torch.testing.assert_close(hf.get_submodule(name).weight, base + scaling * (b @ a), rtol=0, atol=1e-5)


# -- QLoRA and bitsandbytes errors --------------------------------------------------


@pytest.mark.slow
@pytest.mark.cli
def test_qlora_width_not_a_multiple_of_64_is_one_clear_error(warm_cache, tmp_path):
    proc = run_cli(
        [*SMOKE, f"hydra.run.dir={tmp_path}", "quant=qlora", "student=width", "student.intermediate_size=160"],
        warm_cache,
    )
    line = one_line_error(proc, tmp_path)
    assert "multiples of 64" in line and "mlp.gate_proj.base_layer (64 -> 160)" in line
    no_training(proc)


@pytest.mark.slow
@pytest.mark.cli
def test_qlora_without_adapters_is_one_clear_error(warm_cache, tmp_path):
    proc = run_cli([*SMOKE, f"hydra.run.dir={tmp_path}", "quant=qlora", "student.lora.r=0"], warm_cache)
    assert "set student.lora.r > 0" in one_line_error(proc, tmp_path)
    no_training(proc)


@pytest.mark.slow
@pytest.mark.cli
def test_unknown_teacher_load_in_is_one_clear_error(warm_cache, tmp_path):
    proc = run_cli([*SMOKE, f"hydra.run.dir={tmp_path}", "teacher.load_in=2bit"], warm_cache)
    line = one_line_error(proc, tmp_path)
    assert "teacher.load_in='2bit': expected one of 'fp32', 'bf16', '8bit', '4bit'" in line
    no_training(proc)


@pytest.mark.slow
@pytest.mark.cli
def test_8bit_teacher_width_not_a_multiple_of_64_is_one_clear_error(cache_dir, tmp_path):
    # a teacher with 160-wide MLPs (trained for 1 step: only its shape matters)
    proc = run_cli(
        [
            *SMOKE,
            f"hydra.run.dir={tmp_path}",
            "teacher.load_in=8bit",
            "teacher.scratch.intermediate_size=160",
            "teacher.scratch.max_steps=1",
        ],
        cache_dir,
    )
    line = one_line_error(proc, tmp_path)
    assert "teacher.load_in=8bit" in line and "model.layers.0.mlp.gate_proj (64 -> 160)" in line
    assert "max_steps=20" not in proc.stdout + proc.stderr  # the student never trained


# -- a quantized live teacher -------------------------------------------------------


@pytest.fixture(scope="module")
def teacher_runs(tmp_path_factory, cache_dir):
    """``teacher.load_in`` runs (5 steps each), made on first use."""
    runs: dict[str, Path] = {}

    def get(load_in: str) -> Path:
        if load_in not in runs:
            runs[load_in] = train_run(
                tmp_path_factory.mktemp(f"teacher_{load_in}"),
                cache_dir,
                f"teacher.load_in={load_in}",
                "trainer.max_steps=5",
            )
        return runs[load_in]

    return get


# how far the quantized teacher's perplexity may move (the smoke teacher is tiny and barely trained)
PPL_TOLERANCE = {"bf16": 0.01, "8bit": 0.02, "4bit": 0.05}


@pytest.mark.slow
@pytest.mark.cli
@pytest.mark.parametrize("load_in", ["bf16", "8bit", "4bit"])
def test_quantized_teacher_saves_memory(load_in, teacher_runs, qat_run):
    run = teacher_runs(load_in)
    m = metrics_of(run)
    assert m["teacher.load_in"] == load_in
    assert m["teacher.memory_saved_bytes"] > 0
    assert m["teacher.memory_bytes"] + m["teacher.memory_saved_bytes"] == m["teacher.memory_bytes_unquantized"]
    # measured before quantizing: the unquantized teacher's perplexity as in a run without load_in
    assert m["teacher.val_ppl_unquantized"] == pytest.approx(metrics_of(qat_run)["teacher.val_ppl"], rel=1e-6)
    # teacher.val_ppl is the quantized teacher's: close, but not the same number
    assert m["teacher.val_ppl"] != m["teacher.val_ppl_unquantized"]
    assert m["teacher.val_ppl"] == pytest.approx(m["teacher.val_ppl_unquantized"], rel=PPL_TOLERANCE[load_in])
    assert "quant" not in m  # the student is not quantized
    assert f"- teacher loaded in `{load_in}`:" in report_section(run)


@pytest.mark.slow
@pytest.mark.cli
def test_teacher_memory_shrinks_with_fewer_bits(teacher_runs):
    memory = {
        load_in: metrics_of(teacher_runs(load_in))["teacher.memory_bytes"] for load_in in ("bf16", "8bit", "4bit")
    }
    unquantized = metrics_of(teacher_runs("bf16"))["teacher.memory_bytes_unquantized"]
    assert memory["4bit"] < memory["8bit"] < unquantized
    # bf16 halves every parameter (fp32 buffers such as RoPE's inv_freq stay)
    assert 0.5 <= memory["bf16"] / unquantized < 0.51


@pytest.mark.slow
@pytest.mark.cli
def test_4bit_teacher_params_are_counted_unpacked(teacher_runs):
    assert metrics_of(teacher_runs("4bit"))["teacher.params"] == metrics_of(teacher_runs("bf16"))["teacher.params"]


# -- resume -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.cli
@pytest.mark.parametrize("preset", ["qat_int8_int4", "qlora"])
def test_resume_from_last_checkpoint(preset, warm_cache, tmp_path):
    """ckpt_path=last continues a quantized run: the checkpoint (fake-quantized or 4-bit base
    weights) loads into the re-quantized student and only the remaining steps are trained."""
    out = tmp_path / "resumed"
    train_run(out, warm_cache, f"quant={preset}", "trainer.max_steps=10")
    first = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert first["global_step"] == 10
    proc = run_cli(
        [*SMOKE, f"hydra.run.dir={out}", f"quant={preset}", "trainer.max_steps=20", "ckpt_path=last"], warm_cache
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Restored all states from the checkpoint" in proc.stdout + proc.stderr
    m = metrics_of(out)
    assert m["train.tokens"] == 20 * 4 * 64  # both attempts: the first one's tokens come from the checkpoint
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == 20
    assert ckpt["state_dict"].keys() == first["state_dict"].keys()
    assert m["quant"]["quant"] == preset
    if preset == "qlora":  # the 4-bit base is checkpointed packed and stays frozen through the resume
        base = [k for k in first["state_dict"] if k.endswith("base_layer.weight")]
        assert len(base) == len(BLOCK_LINEARS)
        assert all(torch.equal(first["state_dict"][k], ckpt["state_dict"][k]) for k in base)
    else:
        assert (out / "packed" / "quantization.json").is_file()
