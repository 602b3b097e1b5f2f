"""Sentence-embedding distillation: encoder (non-causal) teachers and students, same framework.

``task: embedding`` in the config sends ``distill-train`` here (``distill/cli/train.py``
dispatches on it to ``distill.embedding.train``); the shared pieces (Trainer, loggers, callbacks, checkpoints, pruning
builders, hidden-state losses, run files) are the causal path's own.
"""
