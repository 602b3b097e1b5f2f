"""Dual-space KD (``loss.weights.dual_space``): the chunked term against a plain per-span reference written
from DSKD's loss (values and gradients), then bound to real models inside the objective."""

import pytest
import torch

from distill.align.batch import collate
from distill.errors import DistillError
from distill.forward import model_outputs
from distill.losses.dual_space import DualSpace
from distill.losses.objective import Objective, Outputs
from distill.student.scratch import build_llama
from tests.losses.test_cross_vocab import LS, LT, VS, VT, _rows

B, HS, HT = 2, 6, 5


def _inputs(seed):
    """Both models' Outputs as the objective hands them over (independent tensors: the kernel must not
    assume the logits come from the hidden state) and a batch of real alignments."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape, scale=1.0: torch.randn(*shape, generator=g, dtype=torch.float64) * scale
    student = Outputs(
        logits=rand(B, LS, VS, scale=2).requires_grad_(),
        hidden_states=(rand(B, LS, HS).requires_grad_(),),
        head_weight=rand(VS, HS).requires_grad_(),
    )
    teacher = Outputs(logits=rand(B, LT, VT, scale=2), hidden_states=(rand(B, LT, HT),), head_weight=rand(VT, HT))
    batch = collate([a for a, *_ in _rows(seed)], LT, LS)
    return student, teacher, batch


def reference(student, teacher, batch, s2t, t2s, T, spaces="both"):
    """DSKD's ``kd_loss`` (``t2s_ce + t2s_kd + s2t_kd``) span by span, written out."""
    h_s, h_t = student.hidden_states[-1].flatten(0, 1), teacher.hidden_states[-1].flatten(0, 1)
    z_s, z_t = student.logits.flatten(0, 1), teacher.logits.flatten(0, 1)
    total, weights = 0.0, 0.0
    for k in range(len(batch)):
        w = batch.weight[k].double()
        sr, tr, y = batch.student.rows[k], batch.teacher.rows[k], batch.student.first_ids[k]
        value = 0.0
        if spaces != "student":  # the student's state read by the teacher's head, in the teacher's vocabulary
            p = torch.softmax(z_t[tr] / T, -1)
            q = torch.softmax(teacher.head_weight @ (s2t @ h_s[sr]) / T, -1)
            value = value + (p * (p.log() - q.log())).sum() * T * T
        if spaces != "teacher":  # the teacher's state read by the student's (detached) head: a probe of y
            probe = student.head_weight.detach() @ (t2s @ h_t[tr])
            value = value - torch.log_softmax(probe, -1)[y]
            if probe.argmax() == y:
                p = torch.softmax(probe.detach() / T, -1)
                value = value + (p * (p.log() - torch.log_softmax(z_s[sr] / T, -1))).sum() * T * T
        total, weights = total + w * value, weights + w
    return total / weights


def _module(seed=0, spaces="both"):
    torch.manual_seed(seed)
    return DualSpace(HS, HT, spaces).double()


def _grads(value, student, module):
    leaves = (student.logits, student.hidden_states[0], student.head_weight, module.s2t.weight, module.t2s.weight)
    return torch.autograd.grad(value, leaves, allow_unused=True)


@pytest.mark.parametrize("spaces", ["both", "teacher", "student"])
@pytest.mark.parametrize(("T", "chunk"), [(1.0, 256), (2.0, 3), (1.0, 1)])
def test_term_matches_the_reference_value_and_grad(spaces, T, chunk):
    student, teacher, batch = _inputs(1)
    module = _module(spaces=spaces)
    # a probe that is right at some spans and wrong at others: the mask must matter
    with torch.no_grad():
        module.t2s.weight.mul_(3)
    value, parts = module(student, teacher, batch, T, chunk)
    expected = reference(student, teacher, batch, module.s2t.weight, module.t2s.weight, T, spaces)
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(parts["dual_space.teacher_space"] + parts["dual_space.student_space"], value.detach())
    for got, want in zip(_grads(value, student, module), _grads(expected, student, module)):
        if want is None:
            assert got is None or not got.abs().any()
        else:
            torch.testing.assert_close(got, want)


def test_the_probe_is_right_somewhere_and_wrong_somewhere():
    """(So that the mask in the test above is exercised both ways.)"""
    student, teacher, batch = _inputs(1)
    module = _module()
    with torch.no_grad():
        module.t2s.weight.mul_(3)
    accuracy = module(student, teacher, batch, 1.0, 256)[1]["dual_space.probe_accuracy"]
    assert 0 < accuracy < 1


def test_what_each_half_moves():
    """The teacher space moves the student's hidden state and ``s2t``, never its logits or head; the student
    space moves its logits (toward the probe) and ``t2s`` (the probe's CE), never its head or hidden state."""
    student, teacher, batch = _inputs(1)  # the probe is right at some spans (checked above)
    for spaces, moved, still in (("teacher", (1, 3), (0, 2, 4)), ("student", (0, 4), (1, 2, 3))):
        module = _module(spaces=spaces)
        with torch.no_grad():
            module.t2s.weight.mul_(3)
        grads = _grads(module(student, teacher, batch, 1.0, 256)[0], student, module)
        assert all(grads[i] is not None and grads[i].abs().sum() > 0 for i in moved), spaces
        assert all(grads[i] is None or not grads[i].abs().any() for i in still), spaces


def test_masked_spans_count_nothing_and_get_no_gradient():
    student, teacher, batch = _inputs(3)
    module = _module()
    weight = batch.weight.clone()
    weight[::2] = 0
    masked = type(batch)(batch.teacher, batch.student, weight, batch.one_to_one)
    value = module(student, teacher, masked, 1.0, 256)[0]
    torch.testing.assert_close(value, reference(student, teacher, masked, module.s2t.weight, module.t2s.weight, 1.0))
    grad = torch.autograd.grad(value, student.logits)[0].flatten(0, 1)
    assert not grad[batch.student.rows[::2]].abs().any()


def _tiny_pair(seed=0):
    torch.manual_seed(seed)
    teacher = build_llama(vocab_size=VT, hidden_size=16, num_layers=2, num_heads=2).eval()
    student = build_llama(vocab_size=VS, hidden_size=8, num_layers=1, num_heads=2)
    return teacher, student


def test_bound_to_real_models_it_trains_the_student_and_the_projections_not_the_teacher():
    teacher, student = _tiny_pair()
    obj = Objective({"dual_space": 1.0, "ce": 0.5}).bind(student, teacher)
    assert obj.dual_space.s2t.weight.shape == (16, 8) and obj.dual_space.t2s.weight.shape == (8, 16)
    batch = collate([a for a, *_ in _rows(0)], LT, LS)
    g = torch.Generator().manual_seed(0)
    t_ids, s_ids = torch.randint(0, VT, (B, LT), generator=g), torch.randint(0, VS, (B, LS), generator=g)
    with torch.no_grad():
        t_out = model_outputs(teacher, t_ids, VT, obj)
    s_out = model_outputs(student, s_ids, VS, obj)
    assert s_out.head_weight is student.get_output_embeddings().weight
    terms = obj(s_out, t_out, torch.randint(0, VS, (B, LS), generator=g), aligned=batch)
    assert {"dual_space", "dual_space.teacher_space", "dual_space.student_space", "ce"} <= set(terms)
    direct, _ = obj.dual_space(s_out, t_out, batch, 1.0, 256)
    torch.testing.assert_close(terms["dual_space"], direct.detach())
    terms["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in obj.dual_space.parameters())
    assert student.model.layers[0].mlp.down_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    # the projections are the objective's, not the student's: never exported with it
    assert not any(p is q for p in obj.dual_space.parameters() for q in student.parameters())


def test_minimising_the_teacher_space_brings_the_student_to_the_teacher():
    """A few steps on one batch: the KL in the teacher's vocabulary falls (student and s2t learn together)."""
    teacher, student = _tiny_pair(1)
    obj = Objective({"dual_space": 1.0}, dual_space={"spaces": "teacher"}).bind(student, teacher)
    batch = collate([a for a, *_ in _rows(5)], LT, LS)
    g = torch.Generator().manual_seed(1)
    t_ids, s_ids = torch.randint(0, VT, (B, LT), generator=g), torch.randint(0, VS, (B, LS), generator=g)
    with torch.no_grad():
        t_out = model_outputs(teacher, t_ids, VT, obj)
        t_out.logits = t_out.logits * 20  # a peaked teacher: something to learn
    opt = torch.optim.Adam([*student.parameters(), *obj.parameters()], lr=3e-2)
    losses = []
    for _ in range(30):
        loss = obj(model_outputs(student, s_ids, VS, obj), t_out, torch.zeros(B, LS).long(), aligned=batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-3:]) < 0.7 * losses[0], losses


def test_needs_a_live_teacher_an_alignment_and_a_known_setting():
    teacher, student = _tiny_pair()
    with pytest.raises(DistillError, match=r"^dual-space KD \(DSKD\) \(loss.weights.dual_space\) needs a live teacher"):
        Objective({"dual_space": 1.0}).bind(student, None)
    obj = Objective({"dual_space": 1.0}).bind(student, teacher)
    x = torch.zeros(B, LS).long()
    out = model_outputs(student, x, VS, obj)
    with pytest.raises(DistillError, match="loss.weights.dual_space compares two vocabularies on aligned text"):
        obj(out, out, x)
    assert Objective({"dual_space": 1.0}).dual_space_spec == {"spaces": "both"}
    with pytest.raises(DistillError, match="loss.dual_space.spaces must be one of both, teacher, student"):
        Objective({"dual_space": 1.0}, dual_space={"spaces": "all"})
    with pytest.raises(DistillError, match="loss.fused_linear cannot serve loss.weights.dual_space"):
        Objective({"dual_space": 1.0}, fused_linear=True)


def test_float32_term_from_bf16_models():
    student, teacher, batch = _inputs(4)
    as_bf16 = lambda o: Outputs(
        logits=o.logits.detach().bfloat16().requires_grad_(),
        hidden_states=(o.hidden_states[0].detach().bfloat16().requires_grad_(),),
        head_weight=o.head_weight.detach().bfloat16(),
    )
    student, teacher = as_bf16(student), as_bf16(teacher)
    module = DualSpace(HS, HT)
    value = module(student, teacher, batch, 1.0, 256)[0]
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert student.logits.grad.dtype == torch.bfloat16 and student.hidden_states[0].grad.dtype == torch.bfloat16
