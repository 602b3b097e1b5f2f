"""A conversation as tokens and the mask of the tokens the loss trains on.

The tokens are exactly ``tokenizer.apply_chat_template(messages)``, so inference (the exported
student renders prompts with the same template) sees what training saw. The mask marks the
assistant's tokens, end-of-turn token included, found one of two ways that agree (tested):

- ``markers``: the template's ``{% generation %}`` blocks (transformers'
  ``return_assistant_tokens_mask``), where the template has them;
- ``incremental``: render the conversation up to each assistant turn with the generation prompt,
  and up to the end of that turn; the characters between the two renderings are the turn (trailing
  whitespace after the end-of-turn token is formatting, not a target). Tokens are mapped to those
  characters by their offsets. This works for any template that renders a conversation's prefix
  as a prefix of the whole, which chat templates do so that generation can continue a prompt.

``train_on``: ``all`` assistant turns (after any prompt part of a prompt/completion record) or the
``last`` one. ``prompt_len`` is the number of tokens before the last target turn: the real prompt
on-policy sampling and sequence-level KD continue from (never a response token).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distill.data.chat.conversations import Conversation
from distill.data.chat.templates import has_generation_markers
from distill.errors import DistillError

TRAIN_ON = ("all", "last")


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    mask: np.ndarray  # bool per token: the loss predicts this token
    prompt_len: int  # tokens before the last target turn


def render_ids(tokenizer, messages, template: str, add_generation_prompt: bool = False) -> list[int]:
    out = tokenizer.apply_chat_template(
        list(messages), chat_template=template, tokenize=True, return_dict=True,
        add_generation_prompt=add_generation_prompt,
    )  # fmt: skip
    return list(out["input_ids"])


def turn_spans_markers(tokenizer, conv: Conversation, template: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Tokens, and the token span ``[start, end)`` of every assistant turn, from generation markers."""
    out = tokenizer.apply_chat_template(
        list(conv.messages), chat_template=template, tokenize=True, return_dict=True,
        return_assistant_tokens_mask=True,
    )  # fmt: skip
    mask = np.asarray(out["assistant_masks"], dtype=bool)
    edges = np.flatnonzero(np.diff(np.concatenate([[False], mask, [False]]).astype(np.int8)))
    spans = [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]
    n_assistant = sum(m["role"] == "assistant" for m in conv.messages)
    if len(spans) != n_assistant:  # e.g. an empty turn rendered no token, or markers around other roles
        raise DistillError(
            f"{conv.id}: the chat template's generation markers give {len(spans)} assistant span(s) for "
            f"{n_assistant} assistant message(s); fix the template or use one without markers"
        )
    return list(out["input_ids"]), spans


def turn_spans_incremental(tokenizer, conv: Conversation, template: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Tokens and assistant-turn token spans by rendering prefixes (templates without markers)."""
    render = lambda msgs, gen: tokenizer.apply_chat_template(  # noqa: E731
        list(msgs), chat_template=template, tokenize=False, add_generation_prompt=gen
    )
    text = render(conv.messages, False)
    char_spans = []
    for i, m in enumerate(conv.messages):
        if m["role"] != "assistant":
            continue
        before, through = render(conv.messages[:i], True), render(conv.messages[: i + 1], False)
        if not (text.startswith(before) and text.startswith(through) and len(before) <= len(through)):
            raise DistillError(
                f"{conv.id}: the chat template does not render a conversation's beginning as a prefix of the "
                "whole, so assistant turns cannot be located; use a template with {% generation %} markers"
            )
        char_spans.append((len(before), len(through.rstrip())))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = np.asarray([a for a, _ in enc["offset_mapping"]])
    spans = [(int(np.searchsorted(starts, a)), int(np.searchsorted(starts, b))) for a, b in char_spans]
    return list(enc["input_ids"]), spans


def encode(tokenizer, conv: Conversation, template: str, train_on: str = "all", method: str | None = None) -> Encoded:
    """``conv`` rendered by ``template`` with its loss mask (``method``: markers | incremental | None = auto)."""
    if train_on not in TRAIN_ON:
        raise DistillError(f"data.train_on must be one of {', '.join(TRAIN_ON)}, got {train_on!r}")
    method = method or ("markers" if has_generation_markers(template) else "incremental")
    spans_of = turn_spans_markers if method == "markers" else turn_spans_incremental
    ids, spans = spans_of(tokenizer, conv, template)
    assistant = [i for i, m in enumerate(conv.messages) if m["role"] == "assistant"]
    targets = [span for i, span in zip(assistant, spans) if i >= conv.first_target]
    if train_on == "last":
        targets = targets[-1:]
    mask = np.zeros(len(ids), dtype=bool)
    for a, b in targets:
        mask[a:b] = True
    return Encoded(ids, mask, prompt_len=targets[-1][0])
