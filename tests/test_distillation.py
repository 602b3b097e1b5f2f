"""DistillationModule with each teacher backend, and on-policy (GKD) batches."""

from types import SimpleNamespace

import pytest
import torch

from distill.distillation import DistillationModule
from distill.losses.objective import Objective
from distill.student.prune import every_other_layer
from distill.student.scratch import build_llama
from distill.teacher.cache import CachedTeacher
from distill.teacher.module import Teacher
from distill.teacher.outputs import SparseTeacher
from tests.trainers import quiet_trainer


def _quiet(module):
    module.logged = {}
    module.log = lambda name, value, **k: module.logged.__setitem__(name, value)
    module.log_dict = lambda d, **k: module.logged.update(d)
    return module


def _models():
    torch.manual_seed(0)
    teacher = build_llama(vocab_size=60, hidden_size=32, num_layers=2, num_heads=2, eos_token_id=0)
    return teacher, every_other_layer(teacher)


def test_on_policy_batch_distills_only_sampled_tokens():
    teacher, student = _models()
    obj = Objective({"jsd": 1.0, "ce": 0.5}, on_policy={"lmbda": 1.0, "max_new_tokens": 4, "temperature": 1.0})
    module = _quiet(DistillationModule(student, obj, 60, teacher=Teacher(teacher)))
    x = torch.randint(1, 60, (3, 13))
    inputs, labels, mask = module.sample_from_student(x[:, :-1])
    assert inputs.shape == (3, 12) and torch.equal(inputs[:, :8], x[:, :8])  # prompt kept
    assert mask.sum(1).tolist() == [4, 4, 4] and mask[:, -4:].all()  # the 4 sampled tokens only
    assert (labels == -100).all()  # no ground truth for sampled tokens: CE is off
    loss = module.training_step((x[:, :-1], x[:, 1:], torch.arange(3)), 0)
    assert module.logged["train/on_policy"] == 1.0 and module.logged["train/ce"] == 0
    loss.backward()
    assert any(p.grad is not None for p in student.parameters())
    assert module.student.training  # generation put it back in train mode


def test_off_policy_when_lambda_is_zero():
    teacher, student = _models()
    module = _quiet(DistillationModule(student, Objective({"jsd": 1.0, "ce": 0.5}), 60, teacher=Teacher(teacher)))
    x = torch.randint(0, 60, (2, 9))
    module.training_step((x[:, :-1], x[:, 1:], torch.arange(2)), 0)
    assert "train/on_policy" not in module.logged and module.logged["train/ce"] > 0


class _FakeCache(CachedTeacher):
    """A CachedTeacher whose rows come from memory, not disk: records which rows were asked for."""

    def __init__(self, logprobs, indices):
        self.logprobs, self.indices, self.asked = logprobs, indices, []
        self.cache = SimpleNamespace(sampled=False, cache_dir="memory")  # a top-k cache, as TeacherCache says

    def outputs(self, rows, split="train", device=None):
        self.asked.append(rows.tolist())
        return SparseTeacher(self.logprobs[rows], self.indices[rows])


def test_cached_teacher_is_looked_up_by_row_index():
    teacher, student = _models()
    x = torch.randint(0, 60, (5, 9))
    with torch.no_grad():
        lp, idx = torch.log_softmax(teacher(input_ids=x[:, :-1]).logits, -1).topk(60, -1)
    cache = _FakeCache(lp, idx)
    live = _quiet(DistillationModule(student, Objective({"forward_kl": 1.0}), 60, teacher=Teacher(teacher)))
    cached = _quiet(DistillationModule(student, Objective({"forward_kl": 1.0}), 60, teacher=cache))
    rows = torch.tensor([3, 1])
    batch = (x[rows, :-1], x[rows, 1:], rows)
    # k = vocab in bucket mode is exactly the live teacher
    torch.testing.assert_close(cached.training_step(batch, 0), live.training_step(batch, 0), rtol=1e-5, atol=1e-6)
    assert cache.asked == [[3, 1]]
    # and with the LM head fused into the loss: no student logits at all, the same loss
    fused = Objective({"forward_kl": 1.0}, fused_linear=True)
    cached_fused = _quiet(DistillationModule(student, fused, 60, teacher=cache))
    torch.testing.assert_close(cached_fused.training_step(batch, 0), live.training_step(batch, 0), rtol=1e-5, atol=1e-6)


def test_moe_student_adds_its_load_balancing_loss():
    from distill.student.moe import moe_upcycle

    teacher, _ = _models()
    student = moe_upcycle(teacher, 60, experts_per_token=1)
    module = _quiet(
        DistillationModule(student, Objective({"forward_kl": 1.0, "ce": 0.5}), 60, teacher=Teacher(teacher))
    )
    module.train()
    x = torch.randint(0, 60, (2, 9))
    loss = module.training_step((x[:, :-1], x[:, 1:], torch.arange(2)), 0)
    aux = module.logged["train/router_aux"]
    assert aux > 0
    torch.testing.assert_close(loss.detach(), module.logged["train/forward_kl"] + 0.5 * module.logged["train/ce"] + aux)
    loss.backward()
    # with top-1 routing only the balancing loss reaches the router
    routers = [p for n, p in student.named_parameters() if "gate" in n and "experts" not in n]
    assert routers and all(p.grad is not None and p.grad.abs().sum() > 0 for p in routers)


def _fit_clipped(module_class, rows: int, steps: int, **trainer_kwargs):
    """A tiny live-teacher run with gradient clipping: (module, trainer) after ``steps`` optimizer steps."""
    from torch.utils.data import DataLoader

    teacher, student = _models()
    module = module_class(student, Objective({"forward_kl": 1.0, "ce": 0.5}), 60, teacher=Teacher(teacher))
    data = torch.randint(0, 60, (rows, 9), generator=torch.Generator().manual_seed(1))
    loader = DataLoader([(r[:-1], r[1:], torch.tensor(i)) for i, r in enumerate(data)], batch_size=2)
    trainer = quiet_trainer(max_steps=steps, **trainer_kwargs)
    trainer.fit(module, loader)
    return module, trainer


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_gradient_clipping_under_bf16_autocast_with_the_fused_optimizer(algorithm):
    """Lightning's mixed-precision plugin refuses to clip for a fused AdamW (it unscales inside its step: an
    fp16 rule it applies to bf16 too); the module clips plain gradients itself, both algorithms."""
    module, trainer = _fit_clipped(
        DistillationModule,
        rows=4,
        steps=2,
        precision="bf16-mixed",
        gradient_clip_val=0.01,
        gradient_clip_algorithm=algorithm,
    )
    assert trainer.optimizers[0].defaults["fused"] is True
    assert trainer.global_step == 2
    untouched = _models()[1]
    assert any(not torch.allclose(a, b) for a, b in zip(module.student.parameters(), untouched.parameters()))


def test_gradient_clipping_reuses_the_checked_norm_and_clips_as_lightning_does():
    """One pass over the gradients for the finite check and the clip: the weights after a clipped
    step are those of Lightning's own clipping (``clip_gradients``), and a norm is never reused."""
    import lightning as L

    def fit(module_class):  # gradient_clip_val small enough that every step clips
        return _fit_clipped(module_class, rows=6, steps=3, gradient_clip_val=0.05)[0]

    class LightningClips(DistillationModule):
        configure_gradient_clipping = L.LightningModule.configure_gradient_clipping

    ours, theirs = fit(DistillationModule), fit(LightningClips)
    for a, b in zip(ours.student.parameters(), theirs.student.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    assert ours._grad_norm is None  # consumed by the step that took it
    untouched = _models()[1]
    assert any(not torch.allclose(a, b) for a, b in zip(ours.student.parameters(), untouched.parameters()))
