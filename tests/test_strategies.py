"""distill/sharding.py: the FSDP2 sharding plan and its full-weight gather (in a one-process gloo group,
so they run in the fast tier); distill/ranks.py: rank detection, the rank-0 cache builder;
distill/multirun_ranks.py: local ranks under a multirun; distill/strategies.py: the presets and their checks."""

from __future__ import annotations

import importlib.util
import socket
import threading

import pytest
import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from torch import nn

from distill import multirun_ranks, ranks, sharding, strategies
from distill.distillation import DistillationModule
from distill.errors import DistillError
from distill.losses.objective import ce_only
from distill.student.scratch import build_llama
from distill.teacher.module import Teacher

RANK_VARS = ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")


def tiny_llama(seed: int = 0, hidden: int = 32, layers: int = 2):
    torch.manual_seed(seed)
    return build_llama(
        64, max_seq_len=16, eos_token_id=0, hidden_size=hidden, num_layers=layers, num_heads=2, intermediate_size=64
    )


@pytest.fixture
def mesh():
    """A one-process gloo group and its data-parallel mesh; torn down after the test."""
    from torch.distributed.device_mesh import init_device_mesh

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1, 1), mesh_dim_names=("data_parallel", "tensor_parallel"))
    finally:
        dist.destroy_process_group()


@pytest.fixture
def no_rank_env(monkeypatch):
    for var in RANK_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_shard_then_unsharded_gives_the_plain_model_back(mesh):
    from torch.distributed.fsdp import FSDPModule

    model, reference = tiny_llama(), tiny_llama()
    sharding.shard_model(model, mesh["data_parallel"])
    assert isinstance(model, FSDPModule)
    assert isinstance(model.model.layers[0], FSDPModule)  # every transformer block is its own unit
    assert type(model.model.layers[0].mlp.down_proj.weight.data).__name__ == "DTensor"

    plain = sharding.unsharded(model)
    assert plain is not model and not isinstance(plain, FSDPModule)
    assert not any(p.is_meta or type(p.data).__name__ == "DTensor" for p in plain.parameters())
    assert plain.lm_head.weight is plain.model.embed_tokens.weight  # the tie survives the gather
    for (name, got), want in zip(plain.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)
    ids = torch.randint(0, 64, (2, 8))
    torch.testing.assert_close(plain(input_ids=ids).logits, reference(input_ids=ids).logits)
    assert sharding.unsharded(reference) is reference  # never sharded: unchanged


def test_trained_shards_gather_to_the_trained_weights(mesh):
    """One optimizer step on the sharded model: the gathered weights are the updated ones."""
    model, reference = tiny_llama(), tiny_llama()
    sharding.shard_model(model, mesh["data_parallel"])
    ids = torch.randint(0, 64, (2, 8))
    for m in (model, reference):
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        m(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    plain = sharding.unsharded(model)
    for (name, got), want in zip(plain.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(got, want, msg=name)


def test_sharded_teacher_is_frozen_and_outside_the_optimizer(mesh):
    from torch.distributed.fsdp import FSDPModule

    teacher = Teacher(tiny_llama(seed=1))
    module = DistillationModule(tiny_llama(), ce_only(), 64, teacher=teacher)
    sharding.shard_distillation_module(module, mesh, shard_teacher=True)
    assert isinstance(module.student, FSDPModule) and isinstance(teacher.model, FSDPModule)
    assert not any(p.requires_grad for p in teacher.model.parameters())
    optimized = {id(p) for g in module.configure_optimizers()["optimizer"].param_groups for p in g["params"]}
    assert optimized and not optimized & {id(p) for p in teacher.model.parameters()}
    with torch.no_grad():
        out = teacher.model(input_ids=torch.randint(0, 64, (1, 8))).logits
    assert out.shape == (1, 8, 64) and out.grad_fn is None
    sharding.shard_distillation_module(module, mesh, shard_teacher=True)  # a second configure_model: no-op


def test_several_teachers_are_each_sharded_and_gather_back(mesh):
    from torch.distributed.fsdp import FSDPModule

    from distill.teacher.mixture import MixtureTeacher

    first, second = tiny_llama(seed=1), tiny_llama(seed=2)
    reference = tiny_llama(seed=2)
    mixture = MixtureTeacher([Teacher(first), Teacher(second)], [1, 1], mix="sum")
    module = DistillationModule(tiny_llama(), ce_only(), 64, teacher=mixture)
    sharding.shard_distillation_module(module, mesh, shard_teacher=True)
    assert isinstance(first, FSDPModule) and isinstance(second, FSDPModule)
    assert not any(p.requires_grad for m in (first, second) for p in m.parameters())
    optimized = {id(p) for g in module.configure_optimizers()["optimizer"].param_groups for p in g["params"]}
    assert optimized and not optimized & {id(p) for m in (first, second) for p in m.parameters()}
    ids = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(second(input_ids=ids).logits, reference(input_ids=ids).logits)
    torch.testing.assert_close(sharding.unsharded(second).state_dict(), reference.state_dict())


def test_replicated_teacher_stays_plain(mesh):
    from torch.distributed.fsdp import FSDPModule

    teacher = Teacher(tiny_llama(seed=1))
    module = DistillationModule(tiny_llama(), ce_only(), 64, teacher=teacher)
    sharding.shard_distillation_module(module, mesh, shard_teacher=False)
    assert isinstance(module.student, FSDPModule) and not isinstance(teacher.model, FSDPModule)


def test_fused_linear_loss_is_refused_under_fsdp(mesh):
    loss = ce_only()
    loss.fused_linear = True
    module = DistillationModule(tiny_llama(), loss, 64)
    with pytest.raises(DistillError, match="fused_linear"):
        sharding.shard_distillation_module(module, mesh)
    with pytest.raises(DistillError, match="fused_linear"):
        strategies.check_strategy(
            OmegaConf.create({"strategy": {"_target_": "distill.strategies.FSDP2Strategy"}, "precision": "32-true"}),
            loss,
        )


def test_weightless_clone_has_no_weights_but_keeps_buffers():
    model = tiny_llama()
    clone = sharding.weightless_clone(model)
    assert all(p.is_meta for p in clone.parameters())
    assert clone.lm_head.weight is clone.model.embed_tokens.weight
    for (name, b), (_, want) in zip(clone.named_buffers(), model.named_buffers()):
        torch.testing.assert_close(b, want, msg=name)  # rotary frequencies: no state dict carries them


def test_state_hash_sees_one_changed_weight():
    a, b = tiny_llama(), tiny_llama()
    assert strategies.state_hash(a) == strategies.state_hash(b)
    with torch.no_grad():
        b.model.layers[1].mlp.up_proj.weight[0, 0] += 1e-3
    assert strategies.state_hash(a) != strategies.state_hash(b)


@pytest.mark.parametrize(
    "env, main",
    [
        ({}, True),
        ({"RANK": "0"}, True),
        ({"RANK": "3"}, False),
        ({"SLURM_PROCID": "1"}, False),
        ({"LOCAL_RANK": "1"}, False),
        ({"NODE_RANK": "1"}, False),
        ({"LOCAL_RANK": "0", "NODE_RANK": "0"}, True),
        ({"SLURM_PROCID": "0", "LOCAL_RANK": "1"}, False),  # Lightning's child in a one-task SLURM job
    ],
)
def test_is_main_process_from_the_launcher_environment(no_rank_env, env, main):
    for k, v in env.items():
        no_rank_env.setenv(k, v)
    assert ranks.is_main_process() is main


@pytest.mark.parametrize(
    "devices, nodes, size",
    [
        (1, 1, 1),
        (2, 1, 2),
        (4, 2, 8),
        ([0, 1], 1, 2),
        ("0,1,", 1, 2),
        ("2", 3, 6),
        ("auto", 1, "autox1"),
        (-1, 2, "-1x2"),
    ],
)
def test_data_parallel_size(devices, nodes, size):
    assert ranks.data_parallel_size(devices, nodes) == size


def test_after_rank_zero_waits_for_rank_zeros_entry(tmp_path, no_rank_env):
    built, final = [], tmp_path / "teachers" / "key"
    no_rank_env.setenv("RANK", "1")
    threading.Timer(0.3, lambda: final.mkdir(parents=True)).start()  # rank 0 publishing its entry
    ranks.after_rank_zero(lambda tmp: built.append((tmp, final.is_dir())), final)(tmp_path / "tmp")
    # it built at once (rank 0 had not published yet) and returned only once rank 0's entry was there
    assert built == [(tmp_path / "tmp", False)] and final.is_dir()


def test_after_rank_zero_names_a_missing_shared_cache(tmp_path, no_rank_env):
    no_rank_env.setenv("RANK", "1")
    with pytest.raises(DistillError, match="shared file system"):
        ranks.after_rank_zero(lambda tmp: None, tmp_path / "never", timeout_s=0.3)(tmp_path / "tmp")


def test_after_rank_zero_returns_at_once_on_rank_zero(tmp_path, no_rank_env):
    built = []
    ranks.after_rank_zero(built.append, tmp_path / "never")(tmp_path / "tmp")
    assert built == [tmp_path / "tmp"]


def test_deepspeed_preset_names_what_is_missing(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    with pytest.raises(DistillError, match="'deepspeed' package"):
        strategies.deepspeed_strategy(accelerator="gpu", stage=2)


def test_deepspeed_preset_refuses_cpu(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "deepspeed" else real(name, *a)
    )
    with pytest.raises(DistillError, match="CUDA GPUs only"):
        strategies.deepspeed_strategy(accelerator="cpu", stage=2)


def test_fsdp_strategy_is_data_parallel_over_every_process():
    strategy = strategies.FSDP2Strategy()
    strategy.num_nodes = 2
    strategy._parallel_devices = [torch.device("cpu")] * 3
    # what setup_environment sizes before building the mesh: data parallel over all 6 processes
    strategy._tensor_parallel_size = "auto"
    strategy._data_parallel_size = "auto"
    called = {}
    monkey = pytest.MonkeyPatch()
    monkey.setattr(
        strategies.ModelParallelStrategy,
        "setup_environment",
        lambda self: called.update(dp=self._data_parallel_size, tp=self._tensor_parallel_size),
    )
    try:
        strategy.setup_environment()
    finally:
        monkey.undo()
    assert called == {"dp": 6, "tp": 1}


@pytest.mark.parametrize(
    "quant, load_in, shard_teacher, match",
    [
        ({"_target_": "distill.quant.qlora.QLoRAPlugin"}, None, False, "quant=qlora"),
        (None, "8bit", True, "teacher.load_in=8bit"),
    ],
)
def test_fsdp_refuses_bitsandbytes_packed_weights_early(quant, load_in, shard_teacher, match):
    trainer = OmegaConf.create(
        {
            "strategy": {"_target_": "distill.strategies.FSDP2Strategy", "shard_teacher": shard_teacher},
            "precision": "32-true",
        }
    )
    with pytest.raises(DistillError, match=match):
        strategies.check_strategy(trainer, ce_only(), quant, load_in)


def test_fsdp_allows_a_packed_teacher_it_does_not_shard():
    trainer = OmegaConf.create(
        {
            "strategy": {"_target_": "distill.strategies.FSDP2Strategy", "shard_teacher": False},
            "precision": "bf16-mixed",
        }
    )
    strategies.check_strategy(trainer, ce_only(), None, "4bit")
    strategies.check_strategy(OmegaConf.create({"strategy": "ddp"}), ce_only(), {"_target_": "x.QLoRAPlugin"}, "4bit")


def test_shard_model_names_packed_weights(mesh):
    class Params4bit(nn.Parameter):  # stands in for bitsandbytes' subclass (the check is by name)
        pass

    model = tiny_llama()
    model.model.layers[0].mlp.up_proj.weight = Params4bit(model.model.layers[0].mlp.up_proj.weight.data)
    with pytest.raises(DistillError, match="the teacher .*shard_teacher=false"):
        sharding.shard_model(
            model, mesh["data_parallel"], what="the teacher", fix="set trainer.strategy.shard_teacher=false"
        )


def test_hidden_state_projections_train_as_their_own_shard_unit(mesh):
    """A narrower student: the objective's projections are trainable, so they get sharded (and their
    gradients reduce-scattered) like the student's; one training step runs and updates them."""
    from torch.distributed.fsdp import FSDPModule

    from distill.losses.objective import Objective

    teacher, student = tiny_llama(seed=1, hidden=64), tiny_llama(hidden=32, layers=1)
    loss = Objective({"forward_kl": 1.0, "hidden": 1.0}, hidden={"metric": "mse"}).bind(student, teacher)
    module = DistillationModule(student, loss, 64, teacher=Teacher(teacher))
    sharding.shard_distillation_module(module, mesh, shard_teacher=True)
    assert isinstance(module.loss, FSDPModule)
    proj = module.loss.hidden_loss.projections[0].weight
    assert type(proj.data).__name__ == "DTensor"
    start = proj.full_tensor().clone()
    ids = torch.randint(0, 64, (2, 9))
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.1)
    out = module.loss(module.student_outputs(ids[:, :-1]), module.teacher_outputs(ids[:, :-1], None), ids[:, 1:])
    out["loss"].backward()
    opt.step()
    assert not torch.equal(proj.full_tensor(), start)


def test_child_command_runs_this_job_not_the_sweep():
    argv = ["-m", "--config-dir", "/my/configs", "-cn=train", "optim.lr=1e-3,2e-3", "trainer=ddp", "hydra.sweep.dir=/s"]
    cmd = multirun_ranks.child_command(argv, ["optim.lr=0.002", "trainer=ddp"], "/s/1", local_rank=1)
    assert cmd == [
        "--config-dir",
        "/my/configs",
        "-cn=train",
        "optim.lr=0.002",
        "trainer=ddp",
        'hydra.run.dir="/s/1"',
        "hydra.job.name=train_ddp_process_1",
        "hydra.output_subdir=null",
    ]


def test_fresh_ranks_for_the_next_job_restore_the_launch_environment(monkeypatch):
    monkeypatch.setattr(multirun_ranks, "_ENV_BEFORE_FIRST_JOB", None)
    for var in multirun_ranks._LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")  # the user's own setting survives
    multirun_ranks.fresh_ranks_for_this_job()  # job 0: remembers the environment
    monkeypatch.setenv("LOCAL_RANK", "0")  # what Lightning's launcher exported during job 0
    monkeypatch.setenv("MASTER_PORT", "12345")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    multirun_ranks.fresh_ranks_for_this_job()  # job 1
    import os

    assert "LOCAL_RANK" not in os.environ and "MASTER_PORT" not in os.environ
    assert os.environ["MASTER_ADDR"] == "10.0.0.1"


def compose_trainer(tmp_path, *overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from distill.cli.resolvers import register
    from distill.cli.train import CONFIG_DIR

    register()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"hydra.runtime.output_dir={tmp_path}", "experiment=smoke", *overrides],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_fsdp_preset_makes_a_cpu_trainer(tmp_path):
    from hydra.utils import instantiate

    cfg = compose_trainer(tmp_path, "trainer=fsdp", "trainer.accelerator=cpu", "trainer.num_nodes=1")
    trainer = instantiate(cfg.trainer, logger=False)
    assert isinstance(trainer.strategy, strategies.FSDP2Strategy) and trainer.num_devices == 2
    assert trainer.max_steps == 20 and cfg.trainer.strategy.shard_teacher is False


def test_deepspeed_preset_composes_and_says_why_it_cannot_run_here(tmp_path):
    from hydra.utils import instantiate

    cfg = compose_trainer(tmp_path, "trainer=deepspeed")
    assert cfg.trainer.strategy.accelerator == "gpu" and cfg.trainer.strategy.stage == 2
    if not torch.cuda.is_available():
        with pytest.raises(Exception, match="trainer=deepspeed") as info:  # Hydra wraps it; the CLI unwraps
            instantiate(cfg.trainer.strategy)
        assert isinstance(info.value.__cause__ or info.value, DistillError)


def test_fsdp_refuses_fp16_mixed_precision_early():
    trainer = OmegaConf.create({"strategy": {"_target_": "distill.strategies.FSDP2Strategy"}, "precision": "16-mixed"})
    with pytest.raises(DistillError, match="trainer.precision=32-true"):
        strategies.check_strategy(trainer, ce_only())
    strategies.check_strategy(
        OmegaConf.create({"strategy": {"_target_": "distill.strategies.FSDP2Strategy"}, "precision": "bf16-mixed"}),
        ce_only(),
    )
