"""Which chat template renders the conversations.

The teacher tokenizer's own ``chat_template`` when it has one: the teacher was tuned on it, and
its distribution is only meaningful on the format it knows. Otherwise ``data.chat_template``: a
preset name, a Jinja file, or a Jinja string. The resolved template is set on the tokenizer, so the
exported student carries exactly the template it was trained with.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from distill.errors import DistillError

log = logging.getLogger(__name__)

# ChatML (OpenAI, Qwen): each turn is <|im_start|>role\ncontent<|im_end|>\n. The assistant's content
# and its <|im_end|> sit inside {% generation %} markers, which transformers turns into the
# assistant mask (return_assistant_tokens_mask): the end-of-turn token is a target, so the student
# learns to stop; the newline after it is formatting the prompt side supplies.
CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}{{- '\\n' }}"
    "{%- else %}{{- message['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
PRESETS = {"chatml": CHATML}
# Tokens a tokenizer trained here must hold whole, per preset (a BPE would otherwise split them).
PRESET_SPECIAL_TOKENS = {"chatml": ["<|im_start|>", "<|im_end|>"]}
_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


def has_generation_markers(template: str) -> bool:
    return bool(_GENERATION.search(template))


def template_text(setting: str) -> str:
    """``data.chat_template`` as Jinja: a preset name, a file, or the Jinja itself."""
    if setting in PRESETS:
        return PRESETS[setting]
    if "{{" in setting or "{%" in setting:
        return setting
    path = Path(setting).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8")
    raise DistillError(
        f"data.chat_template {setting!r} is not a preset ({', '.join(PRESETS)}), a Jinja file, or a Jinja template"
    )


def special_tokens(setting: str | None) -> list[str]:
    """Tokens a tokenizer trained for ``data.chat_template`` should add as special tokens."""
    return list(PRESET_SPECIAL_TOKENS.get(setting or "", []))


def resolve_template(tokenizer, setting: str | None, tokenizer_path: str | None = None) -> str:
    """The template that renders the data: the tokenizer's own, else ``data.chat_template``."""
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):  # several named templates (tool use, RAG): the default one renders chats
        own = own.get("default")
    if own:
        if setting:
            log.warning(
                "data.chat_template=%s is ignored: the teacher's tokenizer has its own chat template, the format "
                "the teacher was tuned on",
                setting if setting in PRESETS else "<given>",
            )
        return own
    if not setting:
        where = f"the tokenizer at {tokenizer_path}" if tokenizer_path else "the tokenizer"
        raise DistillError(
            f"no chat template: {where} has none; set data.chat_template (a preset: {', '.join(PRESETS)}; "
            "a Jinja file; or a Jinja string)"
        )
    return template_text(setting)
