"""Every config composes and its objects instantiate (torchtune: a test that composes every experiment)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from distill.align.batch import collate
from distill.align.spans import align_offsets
from distill.align.vocab import NO_CLASS, VocabMapping
from distill.align.within import within_classes
from distill.data.datamodule import TextDataModule
from distill.losses.objective import Objective, Outputs
from distill.run.student import student_spec
from distill.student.scratch import build_llama
from tests.compose import compose_train

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
LOGGERS = sorted(p.stem for p in (CONFIG_DIR / "logger").glob("*.yaml"))
DEBUGS = sorted(p.stem for p in (CONFIG_DIR / "debug").glob("*.yaml"))
STUDENTS = sorted(p.stem for p in (CONFIG_DIR / "student").glob("*.yaml"))


@pytest.fixture(scope="module")
def tiny_teacher():
    return build_llama(vocab_size=128, hidden_size=32, num_layers=4, num_heads=2, max_seq_len=16, eos_token_id=0)


def test_the_expected_groups_exist():
    assert {"quickstart", "smoke"} <= set(EXPERIMENTS)
    assert {"csv", "tensorboard", "wandb", "none"} <= set(LOGGERS)
    assert {"default", "profiler"} <= set(DEBUGS)
    assert {"pretrained", "scratch", "every_other_layer", "depth", "width", "wanda", "magnitude", "moe_upcycle"} <= set(
        STUDENTS
    )


def test_default_is_quickstart(out_dir):
    cfg = compose_train(out_dir)
    assert cfg.task_name == "quickstart"
    assert cfg.paths.output_dir == str(out_dir)
    assert cfg.trainer.max_steps == 400


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_instantiates(name, out_dir, tiny_teacher):
    if "# Planned for:" in (CONFIG_DIR / "experiment" / f"{name}.yaml").read_text():
        pytest.skip("a recipe for GPU nodes (real model dirs, 8 GPUs): composed and planned in tests/run/test_plan.py")
    cfg = compose_train(out_dir, f"experiment={name}")
    if cfg.task != "causal_lm":
        pytest.skip(f"task={cfg.task} composes in its own test (tests/embedding/test_configs.py)")
    # every interpolation resolves (resolvers, ${hydra:...}, env) and nothing is left missing
    resolved = {
        k: OmegaConf.to_container(cfg[k], resolve=True, throw_on_missing=True)
        for k in cfg
        if k != "hydra" and OmegaConf.is_config(cfg[k])
    }
    assert resolved["trainer"]["precision"] in ("bf16-mixed", "32-true")
    assert cfg.paths.output_dir == str(out_dir)
    assert cfg.paths.cache_dir == str(out_dir.parent / "cache")
    assert cfg.optimized_metric == "student.val_ppl"

    dm = instantiate(cfg.data)
    assert isinstance(dm, TextDataModule)
    assert dm.seq_len == cfg.data.seq_len and dm.batch_size == cfg.data.batch_size
    assert dm.cache_dir == cfg.paths.cache_dir

    loss = instantiate(cfg.loss)
    assert isinstance(loss, Objective) and loss.temperature == cfg.loss.temperature
    logits = torch.randn(2, 3, 128)
    terms = loss(Outputs(logits=logits), Outputs(logits=torch.randn(2, 3, 128)), torch.randint(0, 128, (2, 3)))
    assert torch.isfinite(terms["loss"]) and set(terms) == {"loss", "forward_kl", "ce"}

    make_student = instantiate(student_spec(cfg)[0])
    assert isinstance(make_student, functools.partial)
    blocks = np.random.default_rng(0).integers(0, 128, (8, 17))  # calibration rows for the pruned students
    student = make_student(teacher=tiny_teacher, vocab_size=128, train_blocks=blocks)
    assert student.config.num_hidden_layers < tiny_teacher.config.num_hidden_layers

    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    assert callbacks
    loggers = [instantiate(lg) for lg in cfg.logger.values() if lg is not None]
    trainer = instantiate(cfg.trainer, logger=False, callbacks=callbacks)
    assert trainer.max_steps == cfg.trainer.max_steps
    assert trainer.default_root_dir == str(out_dir)
    assert all(Path(lg.save_dir) == out_dir for lg in loggers)

    checkpoint = next(c for c in callbacks if type(c).__name__ == "ModelCheckpoint")
    assert Path(checkpoint.dirpath) == out_dir / "checkpoints"


def test_smoke_is_tiny(out_dir):
    cfg = compose_train(out_dir, "experiment=smoke")
    assert cfg.trainer.max_steps <= 50 and cfg.data.max_docs <= 100
    assert cfg.teacher.scratch.max_steps <= 50 and cfg.teacher.scratch.hidden_size <= 128


def test_files_data_composes_with_smoke(out_dir, tmp_path):
    data = tmp_path / "d.jsonl"
    cfg = compose_train(out_dir, "experiment=smoke", "data=files", f"data.paths=[{data}]", "data.text_field=content")
    dm = instantiate(cfg.data)
    assert isinstance(dm, TextDataModule)
    assert cfg.data.max_docs == 40 and cfg.data.seq_len == 64  # smoke's sizes apply to the files source too
    assert list(cfg.data.paths) == [str(data)]


@pytest.mark.parametrize("name", LOGGERS)
def test_logger_presets_instantiate(name, out_dir):
    cfg = compose_train(out_dir, "experiment=smoke", f"logger={name}")
    loggers = {key: instantiate(lg) for key, lg in cfg.logger.items() if lg is not None}
    if name == "none":
        assert loggers == {}
        return
    assert set(loggers) == {name}
    logger = loggers[name]
    assert Path(logger.save_dir) == out_dir
    expected = {"csv": "CSVLogger", "tensorboard": "TensorBoardLogger", "wandb": "WandbLogger"}[name]
    assert type(logger).__name__ == expected
    if name == "wandb":
        assert cfg.logger.wandb.offline is True  # no key anywhere: logs locally
        assert logger._offline is True
        assert logger._wandb_init["name"] == "smoke" and logger._wandb_init["project"] == "distill"
    trainer = instantiate(cfg.trainer, logger=list(loggers.values()))
    assert trainer.loggers and type(trainer.loggers[0]).__name__ == expected


def test_wandb_goes_online_with_a_key(out_dir, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the test session forces offline; WANDB_MODE wins over a key
    cfg = compose_train(out_dir, "logger=wandb")
    assert cfg.logger.wandb.offline is False


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_callbacks_none_leaves_nothing_to_instantiate(experiment, out_dir):
    """An experiment may tune a callback that callbacks=none switched off: the leftover is skipped."""
    from distill.run.fit import instantiate_all

    cfg = compose_train(out_dir, f"experiment={experiment}", "callbacks=none", "logger=none")
    assert instantiate_all(cfg.callbacks) == []
    assert instantiate_all(cfg.logger) == []
    full = compose_train(out_dir, f"experiment={experiment}")
    assert {type(c).__name__ for c in instantiate_all(full.callbacks)} == {
        "ModelCheckpoint",
        "TitledRichProgressBar",
        "LearningRateMonitor",
        "LossSchedules",
    }


@pytest.mark.parametrize("preset", ["cpu", "ddp"])
def test_trainer_presets_instantiate(preset, out_dir):
    cfg = compose_train(out_dir, "experiment=smoke", f"trainer={preset}")
    assert cfg.trainer.precision in ("bf16-mixed", "32-true")  # no GPU on these machines' CPU path
    trainer = instantiate(cfg.trainer, logger=False)
    assert trainer.max_steps == 20  # the experiment still applies over the preset
    if preset == "cpu":
        assert cfg.trainer.accelerator == "cpu" and trainer.num_devices == 1
    else:
        assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == 2
        assert type(trainer.strategy).__name__ == "DDPStrategy" and trainer.num_devices == 2


def test_trainer_gpu_preset_composes(out_dir):
    cfg = compose_train(out_dir, "experiment=smoke", "trainer=gpu")
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.devices == 1
    assert cfg.trainer.precision in ("bf16-mixed", "16-mixed")


@pytest.mark.parametrize("name", DEBUGS)
def test_debug_configs(name, out_dir):
    cfg = compose_train(out_dir, "experiment=quickstart", f"debug={name}")
    assert cfg.task_name == "debug" and cfg.control is False
    assert cfg.trainer.max_steps == 5 and cfg.teacher.scratch.max_steps == 5  # debug overrides the experiment
    trainer = instantiate(cfg.trainer, logger=False)
    assert trainer.max_steps == 5 and trainer.limit_val_batches == 1
    if name == "profiler":
        assert type(trainer.profiler).__name__ == "SimpleProfiler"


@pytest.mark.parametrize("name", STUDENTS)
def test_student_presets(name, out_dir, tiny_teacher, tmp_path):
    overrides = ["experiment=smoke", f"student={name}"]
    if name == "pretrained":
        overrides.append(f"student.path={tmp_path / 'model'}")
    cfg = compose_train(out_dir, *overrides)
    spec, lora = student_spec(cfg)
    assert lora is None and cfg.student.lora.r == 0  # adapters are off unless student.lora.r > 0
    make_student = instantiate(spec)
    assert isinstance(make_student, functools.partial)
    if name == "pretrained":
        assert make_student.keywords["path"] == str(tmp_path / "model")
        return
    blocks = np.random.default_rng(0).integers(0, 128, size=(16, 17))
    student = make_student(teacher=tiny_teacher, vocab_size=128, train_blocks=blocks)
    assert student.get_output_embeddings().weight.shape[0] == 128
    if name in ("every_other_layer", "depth"):
        assert student.config.num_hidden_layers == tiny_teacher.config.num_hidden_layers // 2


LOSSES = sorted(p.stem for p in (CONFIG_DIR / "loss").glob("*.yaml"))


@pytest.mark.parametrize("name", LOSSES)
def test_loss_presets_compose_and_instantiate(name, out_dir):
    """Each preset computes its own term: the other presets carry forward_kl at weight 0, so a
    preset whose own term were at 0 (or left out) would silently train something else."""
    from distill.distillation import model_outputs

    if "distill.embedding." in (CONFIG_DIR / "loss" / f"{name}.yaml").read_text():
        pytest.skip("an embedding objective (task: embedding): tests/embedding/test_configs.py")
    own = {
        "forward_kl": "forward_kl",
        "reverse_kl": "reverse_kl",
        "jsd": "jsd",
        "tvd": "tvd",
        "gkd": "jsd",
        "hidden": "hidden",
        "attention": "attention",
        "uld": "uld",
        "gold": "gold",
        "projected_kl": "projected_kl",
        "prefix_kl": "prefix_kl",
        "cross_tokenizer": "prefix_kl",
        "alm": "alm",
        "dual_space": "dual_space",
    }[name]  # a new preset: name its own term here
    cfg = compose_train(out_dir, f"loss={name}", "loss.temperature=2.0")
    loss = instantiate(cfg.loss)
    assert isinstance(loss, Objective) and loss.temperature == 2.0
    assert loss.weights[own] > 0 and own in loss.active_terms
    assert (loss.on_policy.lmbda > 0) == (name == "gkd")
    teacher = build_llama(vocab_size=128, hidden_size=32, num_layers=4, num_heads=2, max_seq_len=16, eos_token_id=0)
    student = build_llama(vocab_size=128, hidden_size=16, num_layers=2, num_heads=2, max_seq_len=16, eos_token_id=0)
    if loss.needs_attentions:
        for model in (teacher, student):
            model.set_attn_implementation("eager")
    loss.bind(student, teacher)
    x = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    aligned = None
    if loss.aligned_terms:  # across vocabularies; here one tokenization on both sides, aligned token by token
        offsets = np.stack([np.arange(8), np.arange(1, 9)], -1)
        aligned = collate([align_offsets(row, offsets, row, offsets) for row in x.numpy()], 8, 8)
        same = np.arange(128)  # every token its own string, its own first piece and its own prefix class
        texts = {f"<{i}>".encode(): [i] for i in range(128)}  # strings none of which begins another: no subclass
        within = within_classes(list(texts), texts, texts, same, same)
        cuts = np.ones((NO_CLASS + 1, NO_CLASS + 1), bool)  # every character class before every other: both cut
        loss.mapping = VocabMapping(
            same, same, 128, 128, 0, same, teacher_prefix=same, student_prefix=same, prefix_count=128,
            cuts=cuts, teacher_last_char=np.zeros(128, np.int64), prefix_first_char=np.zeros(129, np.int64),
            within=within, within_student=within,
        )  # fmt: skip
    with torch.no_grad():
        terms = loss(model_outputs(student, x, 128, loss), model_outputs(teacher, x, 128, loss), x, None, aligned)
    assert torch.isfinite(terms["loss"]) and terms[own] > 0


@pytest.mark.parametrize("name", ["live", "cache", "none"])
def test_teacher_backends_compose(name, out_dir):
    cfg = compose_train(out_dir, f"teacher={name}")
    assert cfg.teacher.backend == name
    if name == "cache":
        assert cfg.teacher.top_k == 64 and cfg.teacher.cache_dir.startswith(cfg.paths.cache_dir)
