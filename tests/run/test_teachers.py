"""Several teachers (``teachers=[...]``): composed from the command line, bad entries refused in one line
each, scored as one mixture (dense, top-k, or a weighted sum of per-teacher losses), counted in memory,
and a tiny real run with two teachers of different depths."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from distill.config import validate
from distill.errors import DistillError
from distill.losses.mixture import mixture_logprobs, top_k_of
from distill.losses.objective import Objective, Outputs
from distill.quant.memory import Setup, estimate_memory, teacher_bytes
from distill.run.checks import check_combination
from distill.run.teachers import add_teachers
from distill.run.teachers_config import member_config, place_teachers
from distill.student.scratch import build_llama
from distill.teacher.cache import CachedTeacher, TeacherCache
from distill.teacher.mixture import MixtureTeacher
from distill.teacher.module import Teacher
from distill.teacher.outputs import SparseTeacher
from distill.teacher.source import SEVERAL, TeacherSource
from tests.compose import compose_train
from tests.run_outputs import logged, read_metrics

TWO = "teachers=[{weight: 3}, {scratch: {num_layers: 3}, weight: 1, name: deep}]"
V = 64


def placed(out_dir, *overrides):
    cfg = compose_train(out_dir, "experiment=smoke", *overrides)
    validate(cfg, "train")
    place_teachers(cfg)
    return cfg


def llama(layers: int, seed: int, vocab: int = V):
    torch.manual_seed(seed)
    return build_llama(vocab_size=vocab, hidden_size=32, num_layers=layers, num_heads=2, max_seq_len=16).eval()


# ---------------------------------------------------------------- config


def test_teachers_compose_from_the_command_line_and_the_first_becomes_teacher(out_dir):
    cfg = placed(out_dir, TWO, "teachers_mix=sum")
    assert [e.weight for e in cfg.teachers] == [3, 1] and cfg.teachers_mix == "sum"
    # what an entry leaves unset comes from `teacher` (here experiment=smoke's teacher.scratch)
    assert cfg.teachers[1].scratch.num_layers == 3 and cfg.teachers[1].scratch.hidden_size == 64
    assert cfg.teachers[1].name == "deep" and cfg.teachers[0].backend == "live"
    assert cfg.teacher.scratch.num_layers == 2 and "weight" not in cfg.teacher  # the first, as `teacher`
    assert member_config(cfg, 1).teacher.scratch.num_layers == 3 and member_config(cfg, 1).teachers is None


@pytest.mark.parametrize(
    "teachers, message",
    [
        ("[{weight: -0.5}, {weight: 1}]", "teachers[0].weight=-0.5: a teacher's weight must be a number >= 0"),
        ("[{weight: 0}, {weight: 0}]", "teachers: every weight is 0 (teachers[0].weight=0, teachers[1].weight=0)"),
        ("[{weight: 1}]", "teachers must list two or more teachers"),
        ("[{}, {backend: cache}]", "teachers[1] has backend: cache but no cache_dir: give teachers[1].cache_dir="),
        ("[{}, {backend: none}]", "teachers[1].backend='none': each teacher is live or cache"),
        ("[{name: a}, {name: a}]", "two entries share a name"),
    ],
)
def test_bad_teacher_lists_are_one_line_naming_the_entry(out_dir, teachers, message):
    with pytest.raises(DistillError) as err:
        placed(out_dir, f"teachers={teachers}")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_teachers_with_different_tokenizers_are_refused_in_a_mixture(out_dir, tmp_path):
    from distill.data.tokenizer import train_bpe
    from tests.cli.helpers import save_random_model

    train_bpe(["def main(): return 1\n" * 40, "import os\n" * 40], 300, tmp_path / "tok_a")
    train_bpe(["the quick brown fox. " * 40, "lorem ipsum dolor " * 40], 290, tmp_path / "tok_b")
    a = save_random_model(tmp_path / "a", "llama", tmp_path / "tok_a")
    b = save_random_model(tmp_path / "b", "llama", tmp_path / "tok_b")
    with pytest.raises(DistillError) as err:
        placed(out_dir, f"teachers=[{{path: {a}}}, {{path: {a}}}, {{path: {b}}}]")
    assert "teachers[2].path has a different tokenizer from teachers[0]'s" in str(err.value)
    assert "use teachers_mix=sum" in str(err.value) and "\n" not in str(err.value)
    # under sum each is aligned with the student on its own (tests/run/test_cross_teachers.py)
    assert placed(out_dir, f"teachers=[{{path: {a}}}, {{path: {b}}}]", "teachers_mix=sum").teachers[1].path == str(b)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["loss.fused_linear=true"], "teachers_mix=mixture mixes the live teachers' logits"),
        (["loss=hidden", "loss.hidden.teacher=big"], "loss.hidden.teacher='big' is not one of the teachers"),
        (["loss=hidden", "loss.hidden.teacher=5"], "loss.hidden.teacher=5 is not one of the teachers"),
        (["seq_kd.enabled=true"], "seq_kd.enabled=true generates with one teacher"),
        (
            ["loss=prefix_kl", "loss.prefix_kl.uncovered_ce=0.5"],
            "loss.prefix_kl.uncovered_ce weights the student's rows one teacher's spans leave out",
        ),
    ],
)
def test_combinations_several_teachers_cannot_serve(out_dir, overrides, message):
    cfg = placed(out_dir, TWO, *overrides)
    with pytest.raises(DistillError, match=message.replace("[", r"\[").replace("(", r"\(")):
        check_combination(cfg, instantiate(cfg.loss))


def test_a_hidden_state_term_pairs_with_the_teacher_it_names(out_dir):
    from distill.run.teachers_config import paired_teacher

    cfg = placed(out_dir, TWO, "loss=hidden", "loss.hidden.teacher=deep")
    loss = instantiate(cfg.loss)
    check_combination(cfg, loss)
    assert paired_teacher(cfg, loss) == 1
    assert paired_teacher(placed(out_dir, TWO, "loss=hidden"), loss.__class__(weights={"ce": 1.0})) == 0


# ---------------------------------------------------------------- scoring


def _objective(**kw):
    return Objective(weights={"forward_kl": 1.0, "ce": 0.5}, **kw)


def test_two_live_teachers_of_different_depths_give_the_mixture_at_the_loss_temperature():
    small, deep = llama(1, 0), llama(3, 1)
    ids = torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(0))
    mix = MixtureTeacher([Teacher(small), Teacher(deep)], [3.0, 1.0])
    assert mix.weights == [0.75, 0.25]
    obj = _objective(temperature=2.0)
    out = mix.scores(ids, None, obj, V)
    want = mixture_logprobs([small(ids).logits, deep(ids).logits], [0.75, 0.25], 2.0)
    # the engine divides teacher logits by T: softmax(out / T) is the tempered mixture itself
    torch.testing.assert_close(F.log_softmax(out.logits / 2.0, -1), want)


def test_teachers_of_different_architectures_and_padded_heads_mix():
    """A Llama and a Qwen2 (its LM head padded past the vocabulary) on one tokenizer: each trimmed, then mixed."""
    from tests.cli.helpers import build_random_model

    torch.manual_seed(0)
    qwen = build_random_model("qwen2", V + 64, eos=0).eval()  # 64 rows of padding past the tokenizer
    small = llama(1, 0)
    ids = torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(0))
    out = MixtureTeacher([Teacher(small), Teacher(qwen)], [1, 1]).scores(ids, None, _objective(), V)
    want = mixture_logprobs([small(ids).logits, qwen(ids).logits[..., :V]], [1, 1])
    torch.testing.assert_close(out.logits, want)


def test_hidden_states_come_from_the_paired_teacher_only():
    small, deep = llama(1, 0), llama(3, 1)
    ids = torch.randint(0, V, (1, 8), generator=torch.Generator().manual_seed(0))
    obj = Objective(weights={"forward_kl": 1.0, "hidden": 1.0})
    out = MixtureTeacher([Teacher(small), Teacher(deep)], [1, 1], paired=1).scores(ids, None, obj, V)
    assert len(out.hidden_states) == 4  # the deep teacher's embeddings + 3 layers


def test_each_teacher_reads_the_rows_of_its_tokenizer_and_carries_their_alignment():
    """Teachers of different tokenizers (``distill.run.cross_teachers``): one on the student's rows, one on a view."""
    same, other = llama(1, 0), llama(2, 1, vocab=48)
    ids = torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(0))
    view = torch.randint(0, 48, (2, 6), generator=torch.Generator().manual_seed(1))
    feeds = {"student": (ids, None), "teacher": (ids, "first teacher's alignment"), 0: (view, "view 0's alignment")}
    mix = MixtureTeacher([Teacher(same), Teacher(other)], [1, 1], mix="sum").read_feeds(["student", 0], [V, 48])
    out = mix.scores(ids, None, _objective(), V, feeds=feeds)
    first, second = out.members
    torch.testing.assert_close(first.logits, same(ids).logits)
    torch.testing.assert_close(second.logits, other(view).logits[..., :48])
    assert first.aligned is None and second.aligned == "view 0's alignment" and second.vocab_size == 48
    with pytest.raises(DistillError, match="teachers_mix=mixture mixes distributions over one vocabulary"):
        MixtureTeacher([Teacher(same), Teacher(other)], [1, 1]).read_feeds(["student", 0], [V, 48])


def test_sum_mode_is_the_weighted_sum_of_per_teacher_losses_and_trains_like_the_mixture_for_forward_kl():
    small, deep, student = llama(1, 0), llama(3, 1), llama(1, 2)
    ids = torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(1))
    obj = _objective(temperature=2.0)
    scorers = [Teacher(small), Teacher(deep)]

    def loss_and_grad(teacher_out):
        logits = student(ids).logits.detach().requires_grad_()
        terms = obj(Outputs(logits=logits, vocab_size=V), teacher_out, labels)
        return terms, torch.autograd.grad(terms["loss"], logits)[0]

    summed, g_sum = loss_and_grad(MixtureTeacher(scorers, [0.6, 0.4], mix="sum").scores(ids, None, obj, V))
    one = [loss_and_grad(s.scores(ids, None, obj, V))[0] for s in scorers]
    by_hand = 0.5 * summed["ce"] + 0.6 * one[0]["forward_kl"] + 0.4 * one[1]["forward_kl"]
    torch.testing.assert_close(summed["loss"], by_hand)
    torch.testing.assert_close(summed["forward_kl.teacher1"], one[1]["forward_kl"])
    mixed, g_mix = loss_and_grad(MixtureTeacher(scorers, [0.6, 0.4]).scores(ids, None, obj, V))
    torch.testing.assert_close(g_sum, g_mix)  # Σ w_i KL(p_i‖q) = KL(p_mix‖q) + const
    assert summed["forward_kl"] > mixed["forward_kl"]


def test_a_live_and_a_cached_teacher_mix_on_the_union_of_their_top_k(tmp_path):
    from tests.teacher.tiny_cache import VOCAB, K, random_blocks, tiny_teacher, write_cache

    blocks = random_blocks()
    write_cache(tiny_teacher(), blocks, tmp_path / "cache")
    cached = CachedTeacher(TeacherCache(tmp_path / "cache"))
    live = Teacher(llama(2, 3, vocab=VOCAB))
    ids = torch.from_numpy(blocks["train"][:2, :-1].astype("int64"))
    rows = torch.tensor([0, 1])
    mix = MixtureTeacher([live, cached], [0.5, 0.5])
    assert not mix.scores_new_tokens  # on-policy needs every teacher live
    out = mix.scores(ids, rows, _objective(), VOCAB).logits
    assert isinstance(out, SparseTeacher) and K <= out.shape[-1] <= 2 * K

    def dense(t: SparseTeacher):
        return torch.zeros(*t.shape[:-1], VOCAB).scatter_(-1, t.indices, t.logprobs.exp())

    # each kept token: 0.5 · the live teacher's probability (if in its top-k) + 0.5 · the cache's (if stored)
    by_hand = 0.5 * dense(top_k_of(live.model(ids).logits, K)) + 0.5 * dense(cached.outputs(rows))
    kept = dense(out)
    torch.testing.assert_close(kept, torch.where(kept > 0, by_hand, 0.0), atol=1e-5, rtol=1e-4)
    assert (kept > 0).sum(-1).eq(out.shape[-1]).all()


def test_a_sampled_cache_serves_under_sum_and_is_refused_under_mixture(tmp_path):
    """Under ``sum`` a sampled cache's terms run on its own draws (unbiased, as alone); ``mixture`` would cut
    its draws to the union's top-k, so it is refused in one line naming the entry."""
    from tests.teacher.tiny_cache import VOCAB, random_blocks, tiny_teacher, write_cache

    blocks = random_blocks()
    write_cache(tiny_teacher(), blocks, tmp_path / "topk", temperature=1.0)
    write_cache(tiny_teacher(), blocks, tmp_path / "sampled", temperature=1.0, cache_mode="sample", samples=12)
    topk, sampled = (CachedTeacher(TeacherCache(tmp_path / name)) for name in ("topk", "sampled"))
    assert sampled.cache.sampled and not topk.cache.sampled
    with pytest.raises(DistillError, match=r"^teachers\[1\] is a sampled cache .* use teachers_mix=sum"):
        MixtureTeacher([topk, sampled], [0.5, 0.5])
    ids = torch.from_numpy(blocks["train"][:3, :-1].astype("int64"))
    rows, labels = torch.tensor([0, 4, 7]), torch.from_numpy(blocks["train"][:3, 1:].astype("int64"))
    student, obj = llama(1, 5, vocab=VOCAB), _objective()

    def loss_and_grad(teacher_out):
        logits = student(ids).logits.detach().requires_grad_()
        terms = obj(Outputs(logits=logits, vocab_size=VOCAB), teacher_out, labels)
        return terms, torch.autograd.grad(terms["loss"], logits)[0]

    summed, g_sum = loss_and_grad(
        MixtureTeacher([topk, sampled], [0.25, 0.75], mix="sum").scores(ids, rows, obj, VOCAB)
    )
    alone = [loss_and_grad(s.scores(ids, rows, obj, VOCAB)) for s in (topk, sampled)]
    torch.testing.assert_close(
        summed["loss"], 0.5 * summed["ce"] + 0.25 * alone[0][0]["forward_kl"] + 0.75 * alone[1][0]["forward_kl"]
    )
    torch.testing.assert_close(summed["forward_kl.teacher1"], alone[1][0]["forward_kl"])
    # the gradient of each teacher's term is its own: the weighted sum of the two runs' (each with CE 0.5)
    torch.testing.assert_close(g_sum, 0.25 * alone[0][1] + 0.75 * alone[1][1])
    with pytest.raises(DistillError, match="not reverse_kl"):  # the sampled member still checks the objective
        MixtureTeacher([topk, sampled], [0.5, 0.5], mix="sum").scores(
            ids, rows, Objective(weights={"reverse_kl": 1.0}), VOCAB
        )


# ---------------------------------------------------------------- memory


def test_the_memory_estimate_counts_every_live_teacher():
    student, first, second = llama(1, 0), llama(2, 1), llama(3, 2)
    setup = Setup(batch_size=2, seq_len=16, vocab_size=V)
    one = estimate_memory(student, first, setup)
    members = [TeacherSource("live", model=first), TeacherSource("live", model=second)]
    source = TeacherSource(SEVERAL, model=first, members=members, weights=[0.5, 0.5])
    cfg = OmegaConf.create({"teachers": [{"load_in": None}, {"load_in": None}]})
    both = add_teachers(one, cfg, source, setup)
    assert both["teacher weights"] == one["teacher weights"] + teacher_bytes(second, None)
    assert both["total"] >= one["total"] + teacher_bytes(second, None)
    # sharded over 4 ranks (trainer.strategy.shard_teacher=true): each teacher's quarter, and its gathered blocks
    fsdp = Setup(batch_size=2, seq_len=16, vocab_size=V, strategy="fsdp", world_size=4, shard_teacher=True)
    one = estimate_memory(student, first, fsdp)
    both = add_teachers(one, cfg, source, fsdp)
    assert both["teacher weights"] == one["teacher weights"] + teacher_bytes(second, None) / 4
    assert both["fsdp gathered"] > one["fsdp gathered"] and both["total"] > one["total"]


# ---------------------------------------------------------------- a real run


@pytest.mark.slow
def test_a_tiny_run_with_two_teachers_of_different_depths(out_dir):
    from distill.run.train import train

    cfg = compose_train(out_dir, "experiment=smoke", TWO, "control=false", "trainer.max_steps=6")
    value = train(cfg)
    metrics = read_metrics(out_dir)
    assert math.isfinite(value) and metrics["teachers.count"] == 2
    assert metrics["teachers.0.weight"] == 0.75 and metrics["teachers.1.name"] == "deep"
    assert metrics["teachers.1.params"] > metrics["teachers.0.params"] == metrics["teacher.params"]
    assert metrics["teachers.0.val_ppl"] == metrics["teacher.val_ppl"] and metrics["teachers.1.val_ppl"] > 1
    # the ensemble's perplexity is at most the weighted geometric mean of its members' (log is concave)
    bound = metrics["teachers.0.val_ppl"] ** 0.75 * metrics["teachers.1.val_ppl"] ** 0.25
    assert 1 < metrics["teachers.mixture.val_ppl"] <= bound * (1 + 1e-6)
    assert 0 <= metrics["teachers.mixture.student_top1_agreement"] <= 1 and metrics["teachers.mixture.student_kl"] > 0
    losses = logged(out_dir)["train/forward_kl"]
    assert losses and all(math.isfinite(v) for v in losses)


@pytest.mark.cli
def test_the_cli_says_a_bad_teacher_list_in_one_line(cache_dir, tmp_path):
    from tests.conftest import run_cli

    args = ["experiment=smoke", "teachers=[{weight: -1}, {weight: 1}]", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = run_cli(args, cache_dir)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("distill-train: error:")]
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr[-2000:]
    assert "teachers[0].weight=-1: a teacher's weight must be a number >= 0" in errors[0]
