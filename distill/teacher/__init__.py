"""Teachers: a frozen LightningModule around an HF causal LM."""
