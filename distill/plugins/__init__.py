"""Trainer plugins: quantization (QLoRA, QAT) applied through ``Trainer(plugins=...)``."""
