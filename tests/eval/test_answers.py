"""Judging greedy answers to held-out prompts: compile() never runs the code, the reference is the
row's own last turn, and the metrics are fractions over the prompts."""

from distill.data.chat.render import encode
from distill.data.chat.rows import single_rows
from distill.data.chat.templates import CHATML
from distill.eval.answers import compiles, first_line, is_empty, reference_answers
from tests.data.chat.fixtures import conv


def test_compiles_checks_syntax_without_running(tmp_path):
    marker = tmp_path / "ran"
    assert compiles(f"def f(x):\n    open({str(marker)!r}, 'w')\n    return x\nf(1)\n")
    assert not marker.exists()
    assert not compiles("def f(x)\n    return x") and not compiles("x = '\0'\x00")


def test_an_answer_without_code_does_not_compile():
    # compile() accepts all three; none of them answers the prompt
    for nothing in ("", "  \n\t", "# just a comment\n"):
        assert not compiles(nothing)
    assert not compiles("return 1")  # parses, but compile() refuses it outside a function
    assert compiles("x = 1") and is_empty(" \n") and not is_empty(" x")


def test_first_line_is_stripped_and_empty_safe():
    assert first_line("\n  def f(a, b):  \n    pass") == "def f(a, b):" and first_line("   ") == ""


def test_reference_is_the_rows_last_turn(chat_tokenizer):
    code = "def add(a, b):\n    return a + b"
    c = conv(("system", "s"), ("user", "one"), ("assistant", "first"), ("user", "add?"), ("assistant", code))
    rows, targets, prompt_lens, _ = single_rows([encode(chat_tokenizer, c, CHATML)], 120, pad_id=0)
    [reference] = reference_answers(chat_tokenizer, rows, targets, prompt_lens)
    assert reference == code and compiles(reference)
