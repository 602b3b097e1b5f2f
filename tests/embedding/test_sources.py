"""The docstring source: every docstring of the stdlib (via ast) and the pydoc topics."""

from __future__ import annotations

import ast

from distill.data.sources import _docstrings, docstring_documents

SOURCE = '''
"""Module summary line."""

class Outer:
    """Outer's docstring."""

    def method(self):
        """A method."""
        def inner():
            """Nested function."""

    def bare(self):
        return 1

if True:
    def conditional():
        """Defined under an if."""

async def coro():
    """An async function."""
'''


def test_docstrings_are_named_by_their_qualified_name():
    found = dict(_docstrings(ast.parse(SOURCE)))
    assert found == {
        "<module>": "Module summary line.",
        "Outer": "Outer's docstring.",
        "Outer.method": "A method.",
        "Outer.method.inner": "Nested function.",
        "conditional": "Defined under an if.",
        "coro": "An async function.",
    }


def test_stdlib_docstrings_and_pydoc_topics():
    docs = docstring_documents(max_docs=5, min_chars=40)
    files = {d.id.split("::")[0] for d in docs if "::" in d.id}
    topics = [d for d in docs if d.id.startswith("pydoc:")]
    assert 1 <= len(files) <= 5  # max_docs limits the stdlib files read
    assert all(f.endswith(".py") for f in files)
    assert len(topics) > 50 and any(d.id == "pydoc:if" for d in topics)
    assert all(len(d.text) >= 40 and d.text == d.text.strip() for d in docs)
    assert not any(d.text.startswith('"""') for d in docs)  # cleaned docstrings, not source
    fewer = docstring_documents(max_docs=5, min_chars=400)
    assert 0 < len(fewer) < len(docs)
