"""Student builders. Each takes the teacher model plus flat arguments and returns an HF causal LM."""
