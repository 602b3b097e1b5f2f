"""``data=stdlib_instruct``: an instruction dataset made from the Python standard library, with
nothing downloaded. The user asks for a function from its signature and docstring; the assistant
answers with the function's code. Conversations are grouped by file, so the train/validation split
is by file, like the code corpus (a module's helpers never leak across the split).
"""

from __future__ import annotations

import ast
import textwrap
from collections import Counter

from distill.data.chat.conversations import Conversation
from distill.data.sources import stdlib_documents

ASK = "Write the Python function `{signature}` from the module `{module}`.\n\nDocstring:\n{doc}"


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    return f"{prefix} {node.name}({ast.unparse(node.args)}){returns}"


def file_conversations(path: str, source: str, max_chars: int) -> list[Conversation]:
    """One conversation per top-level function with a docstring whose code fits ``max_chars``."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):  # a few stdlib files are templates or target other versions
        return []
    module = path.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
    out = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or node.decorator_list:
            continue
        doc = ast.get_docstring(node)
        code = ast.get_source_segment(source, node)
        if not doc or not code or len(code) > max_chars:
            continue
        ask = ASK.format(signature=_signature(node), module=module, doc=textwrap.dedent(doc).strip())
        messages = ({"role": "user", "content": ask}, {"role": "assistant", "content": code})
        out.append(Conversation(f"{path}:{node.lineno}", messages, group=path))
    return out


def stdlib_conversations(max_docs: int | None = None, max_chars: int = 600) -> tuple[list[Conversation], Counter]:
    """Conversations from the first ``max_docs`` stdlib files (sorted by path)."""
    convs = [c for d in stdlib_documents(max_docs) for c in file_conversations(d.id, d.text, max_chars)]
    return convs, Counter()
