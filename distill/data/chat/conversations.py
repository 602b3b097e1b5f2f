"""Conversation records: the ``messages`` form of TRL and the OpenAI API, and TRL's conversational
prompt/completion form, read into one validated ``Conversation``.

Decisions (each a test in tests/data/chat/test_conversations.py):

- A record without ``messages`` (or ``prompt`` + ``completion``), a message without ``role`` or
  ``content``, an unknown role, a non-text content part: one error line naming the record. These
  are export bugs or a wrong format, and skipping them could silently drop most of the data.
- ``content`` as a list of parts (the OpenAI multi-part form): the text parts are joined; an image
  or audio part is refused (a text model cannot learn from it).
- A conversation without an assistant turn has nothing to learn: it is skipped and counted.
- prompt/completion: the completion's assistant turns are the targets; assistant turns inside the
  prompt are context (TRL's ``completion_only_loss``). ``first_target`` marks where targets start.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from distill.errors import DistillError

ROLES = ("system", "user", "assistant", "tool")
# Keys a message may carry besides role and content; templates read them (tool calls, tool names).
PASSTHROUGH_KEYS = ("name", "tool_calls", "tool_call_id")


@dataclass(frozen=True)
class Conversation:
    id: str  # "<file>:<line>" or "<file> row <i>": where the record came from
    messages: tuple[dict, ...]
    first_target: int = 0  # assistant messages before this index are context, not targets
    group: str | None = None  # split key when set (e.g. the source file); else the prompt

    @property
    def split_key(self) -> str:
        return self.group if self.group is not None else self.prompt_key

    @property
    def target_turns(self) -> list[int]:
        """Indices of the assistant messages the loss may train on."""
        return [i for i, m in enumerate(self.messages) if m["role"] == "assistant" and i >= self.first_target]

    @property
    def prompt_key(self) -> str:
        """The text before the last target turn: what a user asked. The split is keyed on it."""
        last = self.target_turns[-1]
        return "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in self.messages[:last])


def conversation(where: str, record: dict) -> Conversation | None:
    """One record as a Conversation; None (to be counted) when it has no assistant turn to learn."""
    if "messages" in record:
        messages, first = _messages(where, record["messages"], "messages"), 0
    elif "prompt" in record and "completion" in record:
        prompt = _messages(where, record["prompt"], "prompt")
        completion = _messages(where, record["completion"], "completion")
        messages, first = prompt + completion, len(prompt)
    else:
        raise DistillError(
            f"{where}: a chat record needs 'messages' (a list of {{role, content}}) or 'prompt' and "
            f"'completion' message lists; it has {sorted(record)}"
        )
    conv = Conversation(where, tuple(messages), first)
    return conv if conv.target_turns else None


def _messages(where: str, value, field: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise DistillError(f"{where}: '{field}' must be a non-empty list of messages, got {type(value).__name__}")
    return [_message(f"{where}: {field}[{i}]", m) for i, m in enumerate(value)]


def _message(where: str, m) -> dict:
    if not isinstance(m, dict) or "role" not in m or "content" not in m:
        keys = sorted(m) if isinstance(m, dict) else type(m).__name__
        raise DistillError(f"{where}: a message needs 'role' and 'content' (got {keys})")
    if m["role"] not in ROLES:
        raise DistillError(f"{where}: unknown role {m['role']!r} (expected one of {', '.join(ROLES)})")
    out = {"role": m["role"], "content": _text(where, m["content"], m)}
    out.update({k: m[k] for k in PASSTHROUGH_KEYS if m.get(k) is not None})
    return out


def _text(where: str, content, message: dict) -> str:
    if isinstance(content, str):
        return content
    if content is None and message.get("tool_calls"):  # OpenAI: an assistant turn that only calls tools
        return ""
    if isinstance(content, list):
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind != "text" or not isinstance(part.get("text"), str):
                raise DistillError(
                    f"{where}: content part of type {kind!r} is not text (only text parts are supported)"
                )
            texts.append(part["text"])
        return "".join(texts)
    raise DistillError(f"{where}: 'content' is {type(content).__name__}, not a string or a list of text parts")


def read_conversations(records, max_conversations: int | None = None) -> tuple[list[Conversation], Counter]:
    """Conversations from ``(where, record)`` pairs, and the count of records skipped by reason."""
    out: list[Conversation] = []
    skipped: Counter = Counter()
    for where, record in records:
        conv = conversation(where, record)
        if conv is None:
            skipped["no_assistant_turn"] += 1
            continue
        out.append(conv)
        if max_conversations is not None and len(out) >= max_conversations:
            break
    return out, skipped
