"""Quantization in one place: the Lightning precision plugins (QLoRA, QAT), post-training
quantization (PTQ), the quantized live teacher (``teacher.load_in``), the packed export, the
memory estimate, and ``config.py``, which turns the ``quant=`` group into these objects."""
