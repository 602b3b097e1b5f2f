"""Data: sources -> split -> tokenizer -> packed blocks -> DataModule."""
