"""Thin Hydra entry points."""
