"""Loss functions: pure tensor functions plus their fused, chunked forms."""
