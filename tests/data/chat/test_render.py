"""Tokens and loss masks of rendered conversations: the template's generation markers and
incremental rendering give the same mask; the tokens are exactly apply_chat_template's."""

import re

import numpy as np
import pytest

from distill.data.chat.render import encode
from distill.data.chat.templates import CHATML
from tests.data.chat.fixtures import CONVERSATIONS, conv

PLAIN_CHATML = re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", CHATML)  # the same format, no markers
# Zephyr's layout: a template with other markup and the tokenizer's EOS as end of turn
ZEPHYR = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + eos_token + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def assistant_text(tok, e) -> list[str]:
    """The decoded target runs of an encoded conversation."""
    ids, runs, run = np.asarray(e.ids), [], []
    for i, m in zip(ids, e.mask):
        if m:
            run.append(int(i))
        elif run:
            runs.append(tok.decode(run))
            run = []
    return runs + ([tok.decode(run)] if run else [])


@pytest.mark.parametrize("c", CONVERSATIONS, ids=range(len(CONVERSATIONS)))
def test_markers_and_incremental_rendering_agree(chat_tokenizer, c):
    markers = encode(chat_tokenizer, c, CHATML, method="markers")
    incremental = encode(chat_tokenizer, c, CHATML, method="incremental")
    no_markers = encode(chat_tokenizer, c, PLAIN_CHATML)  # auto: incremental, since it has no markers
    assert markers.ids == incremental.ids == no_markers.ids
    assert markers.ids == chat_tokenizer.apply_chat_template(list(c.messages), chat_template=CHATML)["input_ids"]
    np.testing.assert_array_equal(markers.mask, incremental.mask)
    np.testing.assert_array_equal(markers.mask, no_markers.mask)
    assert markers.prompt_len == incremental.prompt_len


def test_mask_is_the_assistant_content_and_its_end_of_turn(chat_tokenizer):
    e = encode(chat_tokenizer, CONVERSATIONS[0], CHATML)
    assert assistant_text(chat_tokenizer, e) == ["hello 😀<|im_end|>", "ok<|im_end|>"]
    # the last turn's prompt: everything before "ok", ending with the generation prompt
    prompt = chat_tokenizer.decode(e.ids[: e.prompt_len])
    assert prompt.endswith("again?<|im_end|>\n<|im_start|>assistant\n") and "ok" not in prompt
    rendered = chat_tokenizer.apply_chat_template(
        list(CONVERSATIONS[0].messages[:-1]), chat_template=CHATML, add_generation_prompt=True
    )["input_ids"]
    assert e.ids[: e.prompt_len] == rendered


def test_other_markup_by_incremental_rendering(chat_tokenizer):
    e = encode(chat_tokenizer, CONVERSATIONS[3], ZEPHYR)
    assert assistant_text(chat_tokenizer, e) == ["calling<|endoftext|>", "The answer is 42.<|endoftext|>"]


def test_train_on_last_and_prompt_completion(chat_tokenizer):
    last = encode(chat_tokenizer, CONVERSATIONS[2], CHATML, train_on="last")
    assert assistant_text(chat_tokenizer, last) == ["  welcome\t<|im_end|>"]
    everything = encode(chat_tokenizer, CONVERSATIONS[2], CHATML, train_on="all")
    assert assistant_text(chat_tokenizer, everything) == ["sorted(xs)<|im_end|>", "<|im_end|>", "  welcome\t<|im_end|>"]
    completion = conv(
        ("user", "a"), ("assistant", "in the prompt"), ("user", "b"), ("assistant", "answer"), first_target=3
    )
    for method in ("markers", "incremental"):
        e = encode(chat_tokenizer, completion, CHATML, method=method)
        assert assistant_text(chat_tokenizer, e) == ["answer<|im_end|>"]
