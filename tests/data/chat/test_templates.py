"""Which template renders the data: the tokenizer's own, else data.chat_template, else one line."""

import pytest

from distill.data.chat.templates import CHATML, has_generation_markers, resolve_template, template_text
from distill.errors import DistillError


class Tok:
    def __init__(self, chat_template=None):
        self.chat_template = chat_template


def test_the_tokenizers_own_template_wins_over_the_setting():
    assert resolve_template(Tok("{{ own }}"), "chatml") == "{{ own }}"
    assert resolve_template(Tok({"default": "{{ d }}", "tool_use": "{{ t }}"}), None) == "{{ d }}"


def test_setting_as_preset_jinja_string_or_file(tmp_path):
    assert resolve_template(Tok(), "chatml") == CHATML and has_generation_markers(CHATML)
    assert template_text("{% for m in messages %}{{ m.content }}{% endfor %}").startswith("{% for")
    (tmp_path / "t.jinja").write_text("{{ messages }}")
    assert template_text(str(tmp_path / "t.jinja")) == "{{ messages }}"
    with pytest.raises(DistillError, match=r"data.chat_template 'chatlm' is not a preset \(chatml\)"):
        template_text("chatlm")


def test_no_template_anywhere_names_the_setting():
    with pytest.raises(DistillError, match="no chat template: the tokenizer at /t has none; set data.chat_template"):
        resolve_template(Tok(), None, "/t")
