"""Thin Hydra entry points."""

from distill.console import quiet_known_noise

quiet_known_noise()  # before torch, torchao, bitsandbytes and Lightning print at import
