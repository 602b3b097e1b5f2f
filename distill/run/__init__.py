"""The steps of a run, one small module each, shared by every CLI and both tasks.

``setup`` (load policy, checks, run dir, seed) -> ``data`` (documents, tokenizer, filters,
packing) -> ``teacher`` (one resolved ``TeacherSource``) -> ``student`` (builders, adapters,
finalize) -> ``fit`` (the Trainer) -> ``outputs`` (evaluate, export, metrics, report).
``train.py`` is the body of causal ``distill-train``; ``prune.py``, ``cache.py`` and
``filter.py`` are the bodies of the other CLIs; ``distill/embedding/train.py`` is the
embedding task's. Nothing here imports a CLI.
"""
