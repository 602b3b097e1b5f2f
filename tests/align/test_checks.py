"""Same tokenization or not, and the one-line refusals of an objective that does not fit."""

import copy

import pytest

from distill.align.checks import check_objective, same_tokenization
from distill.errors import DistillError
from tests.align.helpers import FAMILIES


def test_same_tokenization_compares_vocabulary_specials_and_pipeline():
    t = FAMILIES["bpe4096"]()
    assert same_tokenization(t, copy.deepcopy(t))
    assert not same_tokenization(t, FAMILIES["bpe300"]())
    added = copy.deepcopy(t)
    added.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    assert not same_tokenization(t, added)


def test_a_same_vocabulary_term_across_tokenizers_is_refused_naming_the_cross_terms():
    t, s = FAMILIES["bpe4096"](), FAMILIES["byte_fallback"]()
    with pytest.raises(DistillError) as err:
        check_objective(["forward_kl", "ce"], t, s)
    assert (
        "\n" not in str(err.value)
        and "'forward_kl'" in str(err.value)
        and "loss=gold, loss=prefix_kl, loss=projected_kl or loss=uld" in str(err.value)
    )
    check_objective(["gold", "uld", "ce"], t, s)  # the cross-tokenizer terms (and CE on the student's labels) fit


def test_a_cross_tokenizer_term_on_one_tokenizer_is_refused():
    t = FAMILIES["bpe4096"]()
    with pytest.raises(DistillError, match="tokenize alike: loss term 'uld'"):
        check_objective(["uld"], t, t)
    check_objective(["forward_kl", "ce"], t, t)
