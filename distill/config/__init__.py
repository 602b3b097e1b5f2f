"""Typed settings: every config value checked once, when the config is composed (``validate``)."""

from distill.config.validate import validate

__all__ = ["validate"]
