"""Deployment: the student as a GGUF file for llama.cpp (``distill-export``, ``distill-train export.gguf=``).

``gguf_file`` writes the file with the ``gguf`` package, ``arch`` maps the architectures, ``vocab`` the
tokenizer, ``command`` is the body of ``distill-export`` and the run's export step. The formats QAT
trains in (bit for bit the same quantizers) live in ``distill.quant.ggml``.
"""
