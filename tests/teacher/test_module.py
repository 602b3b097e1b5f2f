import torch

from distill.distillation import DistillationModule
from distill.losses.objective import Objective
from distill.student.prune import every_other_layer
from distill.student.scratch import build_llama
from distill.teacher.module import Teacher


def _module():
    torch.manual_seed(0)
    teacher_model = build_llama(vocab_size=100, hidden_size=32, num_layers=2, num_heads=2)
    student = every_other_layer(teacher_model)
    return DistillationModule(
        student,
        Objective({"forward_kl": 1.0, "ce": 0.5}, temperature=2.0),
        vocab_size=100,
        teacher=Teacher(teacher_model),
    ), teacher_model


def test_teacher_is_frozen_and_stays_in_eval_mode():
    module, teacher_model = _module()
    module.train()
    assert not module.teacher.training and not teacher_model.training
    assert all(not p.requires_grad for p in teacher_model.parameters())


def test_teacher_not_in_state_dict_nor_optimizer():
    module, teacher_model = _module()
    assert all(not k.startswith("teacher") for k in module.state_dict())
    assert all(k.startswith("student.") for k in module.state_dict())
    opt = module.configure_optimizers()["optimizer"]
    opt_params = {id(p) for group in opt.param_groups for p in group["params"]}
    assert not opt_params & {id(p) for p in teacher_model.parameters()}
    assert opt_params == {id(p) for p in module.student.parameters()}


def test_training_step_leaves_teacher_untouched_and_gives_student_grads():
    module, teacher_model = _module()
    before = {k: v.clone() for k, v in teacher_model.state_dict().items()}
    x = torch.randint(0, 100, (2, 9))
    module.log = lambda *a, **k: None
    module.log_dict = lambda *a, **k: None
    loss = module.training_step((x[:, :-1], x[:, 1:]), 0)
    loss.backward()
    assert all(p.grad is None for p in teacher_model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.student.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher_model.state_dict().items())


def test_teacher_moves_with_the_module():
    module, teacher_model = _module()
    module.to(torch.float64)
    assert next(teacher_model.parameters()).dtype == torch.float64


def test_lr_schedule_warms_up_then_decays_to_floor():
    module, _ = _module()
    module.warmup_steps, module.max_steps, module.min_lr_ratio = 10, 100, 0.1
    factors = [module._lr_factor(s) for s in range(120)]
    assert factors[0] == 0.1 and factors[9] == 1.0
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert factors[-1] == 0.1
