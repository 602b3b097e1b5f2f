import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from distill.errors import DistillError
from distill.losses.representation import (
    AttentionLoss,
    HiddenStateLoss,
    attention_kl,
    hidden_cosine,
    hidden_mse,
    layer_pairs,
    require_eager_attention,
    use_eager_attention,
)
from distill.student.scratch import build_llama

DTYPES = [torch.float32, torch.bfloat16]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _mask(b=3, t=7):
    m = torch.ones(b, t, dtype=torch.bool)
    m[0, :3] = False  # left padding
    m[2, -2:] = False  # right padding
    return m


def _hidden(dtype, seed=0, b=3, t=7, h=16):
    g = _gen(seed)
    s = torch.randn(b, t, h, generator=g).to(dtype).requires_grad_(True)
    te = torch.randn(b, t, h, generator=g).to(dtype)
    return s, te


def _attn(dtype, seed=0, b=3, hs=4, ht=4, t=6, causal=False):
    g = _gen(seed)
    logits_s, logits_t = torch.randn(b, hs, t, t, generator=g) * 2, torch.randn(b, ht, t, t, generator=g) * 2
    if causal:
        future = torch.ones(t, t, dtype=torch.bool).triu(1)
        logits_s, logits_t = logits_s.masked_fill(future, float("-inf")), logits_t.masked_fill(future, float("-inf"))
    s = logits_s.softmax(-1).to(dtype).requires_grad_(True)
    return s, logits_t.softmax(-1).to(dtype)


# Plain references, written differently from the implementation.


def ref_mse(s, t, mask):
    return F.mse_loss(s.float()[mask], t.float()[mask])


def ref_cosine(s, t, mask):
    return (1 - F.cosine_similarity(s.float()[mask], t.float()[mask], dim=-1)).mean()


def ref_attention_kl(s, t, mask):
    """Loops over batch, student head and query row; teacher heads grouped by hand."""
    s, t = s.float(), t.float()
    hs, ht = s.shape[1], t.shape[1]
    if ht != hs and ht % hs:
        s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
        hs, ht = 1, 1
    g = ht // hs
    total, n = 0.0, 0
    for b in range(s.shape[0]):
        for h in range(hs):
            t_h = sum(t[b, h * g + j] for j in range(g)) / g
            for q in range(s.shape[2]):
                if mask[b, q]:
                    log_s = s[b, h, q].clamp_min(1e-12).log()
                    total = total + F.kl_div(log_s, t_h[q], reduction="sum")
                    n += 1
    return total / n


def _check_against_reference(fn, ref, s, t, mask):
    out = fn(s, t, mask)
    (g,) = torch.autograd.grad(out, s)
    s32 = s.detach().float().requires_grad_(True)
    expected = ref(s32, t, mask)
    (g_ref,) = torch.autograd.grad(expected, s32)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert g.dtype == s.dtype
    torch.testing.assert_close(g, g_ref.to(s.dtype), rtol=1e-4 if s.dtype == torch.float32 else 1.6e-2, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fn,ref", [(hidden_mse, ref_mse), (hidden_cosine, ref_cosine)])
def test_hidden_losses_match_reference(fn, ref, dtype):
    s, t = _hidden(dtype)
    _check_against_reference(fn, ref, s, t, _mask())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ht", [4, 8, 6])  # equal, grouped (g=2), indivisible (all heads averaged)
def test_attention_kl_matches_reference(ht, dtype):
    s, t = _attn(dtype, ht=ht)
    _check_against_reference(attention_kl, ref_attention_kl, s, t, _mask(3, 6))


@pytest.mark.parametrize("fn,make", [(hidden_mse, _hidden), (hidden_cosine, _hidden), (attention_kl, _attn)])
def test_padding_is_excluded(fn, make):
    s, t = make(torch.float32)
    mask = _mask(s.shape[0], s.shape[-2])
    base = fn(s, t, mask)
    (g,) = torch.autograd.grad(base, s)
    pad = ~mask
    s2, t2 = s.detach().clone(), t.clone()
    rows = pad[:, None, :] if s.dim() == 4 else pad  # attention: padded query rows
    s2[rows.expand(s.shape[:-1])] = 1e4
    t2[rows.expand(t.shape[:-1])] = -3.0
    s2.requires_grad_(True)
    again = fn(s2, t2, mask)
    (g2,) = torch.autograd.grad(again, s2)
    torch.testing.assert_close(again, base)
    torch.testing.assert_close(g2, g)
    assert (g2[rows.expand(s.shape[:-1])] == 0).all()
    assert fn(s, t, None).item() != pytest.approx(base.item())  # the mask does something


def test_zero_for_identical_inputs():
    s, _ = _hidden(torch.float32)
    a, _ = _attn(torch.float32, causal=True)
    assert hidden_mse(s, s).item() == 0.0
    assert hidden_cosine(s, s * 3).item() == pytest.approx(0.0, abs=1e-6)
    assert attention_kl(a, a).item() == pytest.approx(0.0, abs=1e-6)


def test_attention_kl_causal_zeros_are_stable():
    s, t = _attn(torch.float32, causal=True)
    assert (s == 0).any() and (t == 0).any()
    out = attention_kl(s, t)
    (g,) = torch.autograd.grad(out, s)
    assert torch.isfinite(out) and out.item() > 0 and torch.isfinite(g).all()
    # The student zeroes a key the teacher attends to: large but finite.
    s2 = s.detach().clone()
    s2[:, :, -1, 0] = 0.0
    s2.requires_grad_(True)
    out2 = attention_kl(s2, t)
    (g2,) = torch.autograd.grad(out2, s2)
    assert torch.isfinite(out2) and torch.isfinite(g2).all() and out2 > out


def test_head_grouping_pairs_consecutive_teacher_heads():
    s, _ = _attn(torch.float32, hs=2)
    teacher = s.detach().repeat_interleave(3, dim=1)  # teacher heads 0-2 = student head 0, 3-5 = head 1
    assert attention_kl(s, teacher).item() == pytest.approx(0.0, abs=1e-6)
    shuffled = s.detach().repeat(1, 3, 1, 1)  # interleaved, so each group mixes both heads
    assert attention_kl(s, shuffled).item() > 1e-3


def test_shape_mismatch_is_a_clear_error():
    s, t = _hidden(torch.float32)
    with pytest.raises(DistillError, match="student shape"):
        hidden_mse(s, t[..., :8])
    a, b = _attn(torch.float32)
    with pytest.raises(DistillError, match="equal B and T"):
        attention_kl(a, b[:, :, :3, :3])


# layer_pairs


@pytest.mark.parametrize(
    "nt,ns,expected",
    [
        (8, 4, [(1, 0), (3, 1), (5, 2), (7, 3)]),
        (4, 2, [(1, 0), (3, 1)]),
        (6, 4, [(1, 0), (2, 1), (4, 2), (5, 3)]),
        (3, 3, [(0, 0), (1, 1), (2, 2)]),
        (2, 4, [(0, 0), (0, 1), (1, 2), (1, 3)]),
    ],
)
def test_layer_pairs_auto(nt, ns, expected):
    assert layer_pairs("auto", nt, ns) == expected
    assert layer_pairs(None, nt, ns) == expected


def test_layer_pairs_explicit_including_hydra_lists():
    assert layer_pairs([[0, 0], (7, 3)], 8, 4) == [(0, 0), (7, 3)]
    assert layer_pairs(OmegaConf.create([[2, 1], [5, 3]]), 8, 4) == [(2, 1), (5, 3)]


@pytest.mark.parametrize(
    "spec,match",
    [
        ([[8, 0]], "teacher layer 8 is out of range, the teacher has layers 0..7"),
        ([[0, 4]], "student layer 4 is out of range"),
        ([[-1, 0]], "teacher layer -1 is out of range"),
        ([[1, 2, 3]], "must be \\[teacher_layer, student_layer\\]"),
        ([[1.5, 0]], "two integers"),
        ([], "non-empty list"),
        ("every_other", "'auto' or a non-empty list"),
        (3, "'auto' or a non-empty list"),
    ],
)
def test_layer_pairs_errors(spec, match):
    with pytest.raises(DistillError, match=match) as info:
        layer_pairs(spec, 8, 4)
    assert "\n" not in str(info.value)


# Modules


@pytest.mark.parametrize("metric", ["mse", "cosine"])
def test_projection_present_iff_widths_differ_and_trained(metric):
    pairs = [(1, 0), (3, 1)]
    same = HiddenStateLoss(pairs, 16, 16, metric)
    assert len(same.projections) == 0 and not list(same.parameters())
    diff = HiddenStateLoss(pairs, 8, 16, metric)
    assert [tuple(p.weight.shape) for p in diff.projections] == [(16, 8), (16, 8)]
    assert all(p.bias is None for p in diff.projections)
    g = _gen(1)
    student = tuple(torch.randn(2, 5, 8, generator=g, requires_grad=True) for _ in range(3))
    teacher = tuple(torch.randn(2, 5, 16, generator=g) for _ in range(5))
    loss = diff(student, teacher, torch.ones(2, 5, dtype=torch.bool))
    loss.backward()
    assert all(p.weight.grad is not None and p.weight.grad.abs().sum() > 0 for p in diff.projections)
    # Index i is hidden_states[i + 1]: the embeddings (index 0) get no gradient.
    assert student[0].grad is None and student[1].grad is not None and student[2].grad is not None
    expected = torch.stack(
        [_HIDDEN[metric](diff.projections[k](student[s + 1]), teacher[t + 1], None) for k, (t, s) in enumerate(pairs)]
    ).mean()
    torch.testing.assert_close(loss, expected)


_HIDDEN = {"mse": hidden_mse, "cosine": hidden_cosine}


def test_module_config_errors():
    with pytest.raises(DistillError, match="metric"):
        HiddenStateLoss([(0, 0)], 8, 8, "l1")
    with pytest.raises(DistillError, match="at least one layer pair"):
        AttentionLoss([])
    with pytest.raises(DistillError, match="output_hidden_states=True"):
        HiddenStateLoss([(0, 0)], 8, 8)(None, (torch.zeros(1, 2, 8),) * 2, None)


def _tiny(layers, width, heads):
    torch.manual_seed(layers)
    return build_llama(
        vocab_size=40, hidden_size=width, num_layers=layers, num_heads=heads, intermediate_size=32, max_seq_len=16
    )


def test_require_eager_attention_on_sdpa_model():
    model = _tiny(1, 16, 2)
    assert model.config._attn_implementation == "sdpa"  # the transformers 5 default
    with pytest.raises(DistillError, match="needs attn_implementation=\"eager\".*teacher uses 'sdpa'") as info:
        require_eager_attention(model, "teacher")
    assert "\n" not in str(info.value)
    ids = torch.randint(0, 40, (1, 4))
    assert not model(ids, output_attentions=True).attentions  # sdpa silently returns no maps
    with pytest.raises(DistillError, match="eager"):
        AttentionLoss([(0, 0)])((), (), None)
    use_eager_attention(model)
    require_eager_attention(model, "teacher")
    assert len(model(ids, output_attentions=True).attentions) == 1


def test_tiny_llama_teacher_and_student_end_to_end():
    teacher, student = _tiny(4, 32, 4), _tiny(2, 16, 2)
    for m in (teacher, student):
        use_eager_attention(m)
    ids = torch.randint(0, 40, (2, 8))
    attn_mask = torch.ones(2, 8, dtype=torch.long)
    attn_mask[1, :3] = 0  # left padding
    kwargs = dict(attention_mask=attn_mask, output_hidden_states=True, output_attentions=True)
    with torch.no_grad():
        t_out = teacher(ids, **kwargs)
    s_out = student(ids, **kwargs)
    assert len(s_out.hidden_states) == 3 and len(s_out.attentions) == 2
    pairs = layer_pairs("auto", 4, 2)
    assert pairs == [(1, 0), (3, 1)]
    hidden = HiddenStateLoss(pairs, 16, 32, "mse")
    attention = AttentionLoss(pairs)  # 4 teacher heads grouped onto 2 student heads
    mask = attn_mask.bool()
    loss = hidden(s_out.hidden_states, t_out.hidden_states, mask) + attention(s_out.attentions, t_out.attentions, mask)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    grads = [p.grad for p in student.model.layers.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is not None for p in hidden.parameters())
    # The projections belong to the loss, not to the student that gets exported.
    assert not {id(p) for p in hidden.parameters()} & {id(p) for p in student.parameters()}
