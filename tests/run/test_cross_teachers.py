"""Several teachers of different tokenizers, each aligned with the student on its own."""

from __future__ import annotations

import math

import pytest

from distill.align.checks import same_tokenization
from distill.data.sources import stdlib_documents
from distill.data.tokenizer import load_tokenizer, train_bpe
from distill.errors import DistillError
from distill.run.cross_teachers import STUDENT, TEACHER, check_terms, teacher_reads
from tests.compose import compose_train
from tests.run_outputs import logged, read_metrics


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("toks")
    texts = [d.text for d in stdlib_documents(20)]
    for name, size in (("a", 400), ("b", 600), ("c", 500)):
        train_bpe(texts, size, tmp / name)
    return {name: load_tokenizer(tmp / name) for name in "abc"}, tmp


def test_each_teacher_reads_the_student_rows_the_first_teachers_or_a_view_of_its_own(tokenizers):
    tok, _ = tokenizers
    a_again = load_tokenizer(tok["a"].name_or_path)  # another object, the same tokenization
    reads, views = teacher_reads([tok["a"], tok["b"], a_again, tok["c"], tok["b"]], tok["a"], tok["c"])
    assert reads == [TEACHER, 0, TEACHER, STUDENT, 0]
    assert len(views) == 1 and same_tokenization(views[0], tok["b"])
    reads, views = teacher_reads([tok["a"], tok["b"]], tok["a"], tok["a"])  # the student shares the first's
    assert reads == [STUDENT, 0] and len(views) == 1


@pytest.mark.parametrize(
    "terms, reads, paired, on_policy, message",
    [
        (["ce", "gold"], [STUDENT, 0], 0, False, "teachers[0] shares the student's tokenizer, but no loss term"),
        (["ce", "forward_kl"], [STUDENT, 0], 0, False, "teachers[1] tokenizes differently from the student"),
        (["forward_kl", "gold", "hidden"], [STUDENT, 0], 1, False, "loss.weights.hidden pairs positions"),
        (["forward_kl", "gold"], [STUDENT, 0], 0, True, "on-policy sampling (loss.on_policy.lmbda > 0)"),
    ],
)
def test_a_teacher_no_term_can_compare_is_refused_in_one_line(terms, reads, paired, on_policy, message):
    with pytest.raises(DistillError) as err:
        check_terms(terms, reads, paired, on_policy)
    assert message in str(err.value) and "\n" not in str(err.value)
    check_terms(["ce", "forward_kl", "gold"], [STUDENT, 0, TEACHER], 0, False)  # every teacher has a term


@pytest.mark.slow
@pytest.mark.parametrize("student", ["shared", "own"])
def test_a_tiny_run_with_a_teacher_of_another_tokenizer(out_dir, tokenizers, tmp_path, student):
    from distill.run.train import train
    from tests.cli.helpers import save_random_model

    other = save_random_model(tmp_path / "other", "llama", tokenizers[1] / "b")
    own = ["student=scratch", "student.vocab_size=300"] if student == "own" else []
    cfg = compose_train(
        out_dir,
        "experiment=smoke",
        f"teachers=[{{weight: 3}}, {{path: {other}, weight: 1, name: other}}]",
        "teachers_mix=sum",
        "loss=gold",
        "loss.weights.forward_kl=1.0",
        "control=false",
        "trainer.max_steps=6",
        *own,
    )
    assert math.isfinite(train(cfg))
    metrics, curves = read_metrics(out_dir), logged(out_dir)
    # the second teacher reads its own tokens of each row's text, compared by GOLD on its alignment
    assert curves["train/gold.teacher1"] and all(math.isfinite(v) for v in curves["train/gold.teacher1"])
    if student == "shared":  # the first teacher reads the student's own rows: the exact divergence
        assert curves["train/forward_kl.teacher0"] and "train/gold.teacher0" not in curves
    else:  # both tokenize differently from the student
        assert curves["train/gold.teacher0"] and "train/forward_kl.teacher0" not in curves
    assert metrics["teachers.1.bits_per_byte"] > 0 and 0 <= metrics["teachers.1.student_top1_agreement"] <= 1
    assert metrics["teachers.1.params"] > 0 and metrics["teachers.0.bits_per_byte"] > 0


@pytest.mark.cli
def test_the_cli_refuses_a_teacher_no_term_can_compare_in_one_line(tokenizers, tmp_path, cache_dir):
    """A teacher of another tokenizer under forward KL alone: one line naming the teacher and the fix."""
    from tests.cli.helpers import save_random_model
    from tests.conftest import run_cli

    other = save_random_model(tmp_path / "other", "llama", tokenizers[1] / "b")
    args = ["experiment=smoke", f"teachers=[{{weight: 1}}, {{path: {other}}}]", "teachers_mix=sum"]
    proc = run_cli([*args, "control=false", f"hydra.run.dir={tmp_path / 'run'}"], cache_dir)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("distill-train: error:")]
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr[-2000:]
    assert "teachers[1] tokenizes differently from the student" in errors[0] and "loss.weights.gold=1" in errors[0]
    assert not (tmp_path / "run" / "metrics.json").exists()
