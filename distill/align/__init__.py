"""Cross-tokenizer alignment: two tokenizations of one text, aligned by character offsets."""
