"""Keep API keys and tokens out of everything a run writes.

Secrets reach a run two ways: through the environment (``WANDB_API_KEY``, ``HF_TOKEN``, ...)
and through config values (``${oc.env:HF_TOKEN}``, or a literal on the command line). Hydra
saves the config *unresolved*, so an ``${oc.env:...}`` interpolation stays text in
``.hydra/config.yaml``; what can leak is a resolved value (logger hyperparameters,
``run_info.json``), a literal, or a log line. Three guards, all built on :func:`redact`:

- :class:`ScrubSavedConfig`, a Hydra callback: rewrites ``.hydra/*.yaml`` right after Hydra
  saves them (before the task runs) with secret values and secret-named keys masked;
- :class:`RedactingFilter` on every log handler: masks secret values in log records;
- :func:`redact` on every structure the run serializes from its config.

No library does this for Hydra runs (Hydra and Lightning write what they are given), hence by hand.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

MASK = "***"
# Environment variables that hold secrets: *_TOKEN, *_KEY, *SECRET*, *PASSWORD*/*PASSWD*.
SECRET_ENV = re.compile(r"(^|_)(TOKEN|KEY)$|SECRET|PASSWORD|PASSWD", re.IGNORECASE)
# Config keys that hold secrets. Narrower than the env pattern: configs have ordinary keys
# ending in _key (data_key, tokenizer_key: hashes) and _token (eos_token, pad_token: vocabulary).
SECRET_KEY = re.compile(
    r"^token$|(^|_)(hf|hub|auth|access|api|bearer|wandb)_token$"
    r"|(^|_)(api_?key|access_key|private_key|secret|password|passwd)$",
    re.IGNORECASE,
)
MIN_SECRET_LEN = 6  # shorter values ("1", "true") would mask ordinary text everywhere


def is_secret_env(name: str) -> bool:
    return bool(SECRET_ENV.search(name))


def is_secret_name(name: str) -> bool:
    """A config key (or the last part of a dotted override key) that holds a secret."""
    return bool(SECRET_KEY.search(name.split(".")[-1].lstrip("+~")))


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of secret-named environment variables, longest first (so a secret that contains
    another is masked whole)."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if is_secret_env(k) and len(v) >= MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, secrets: list[str] | None = None) -> str:
    for value in secret_values() if secrets is None else secrets:
        text = text.replace(value, MASK)
    return text


def redact(obj: Any, secrets: list[str] | None = None) -> Any:
    """A copy of a plain structure (dicts, lists, strings) with secret values masked, and the
    values of secret-named keys masked unless they are unresolved interpolations (``${...}``:
    text naming a variable, not its value)."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if is_secret_name(str(key)) and isinstance(value, str) and value and not value.startswith("${"):
                out[key] = MASK
            else:
                out[key] = redact(value, secrets)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v, secrets) for v in obj)
    if isinstance(obj, str):
        return redact_override(obj, secrets)
    return obj


def redact_override(text: str, secrets: list[str]) -> str:
    """A string with secret values masked; a command-line override ``a.b.api_key=VALUE`` whose
    key names a secret keeps only its key (overrides.yaml and hydra.yaml list them)."""
    key, sep, value = text.partition("=")
    if sep and " " not in key and is_secret_name(key) and value and not value.startswith("${"):
        return f"{key}={MASK}"
    return redact_text(text, secrets)


ASSIGNMENT = re.compile(r"([+~]?[A-Za-z_][\w.]*)=(\S+)")


def mask_assignments(text: str) -> str:
    """``a.api_key=VALUE`` anywhere in a line (Hydra logs each trial's overrides) -> ``a.api_key=***``."""
    return ASSIGNMENT.sub(lambda m: f"{m[1]}={MASK}" if is_secret_name(m[1]) else m[0], text)


class RedactingFilter(logging.Filter):
    """Masks secret values and secret-named ``key=value`` pairs in a record's final message."""

    def __init__(self, secrets: list[str] | None = None):
        super().__init__()
        self.secrets = secret_values() if secrets is None else secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_assignments(redact_text(message, self.secrets))
        if masked != message:
            record.msg, record.args = masked, None
        return True


def install_log_redaction() -> None:
    """A :class:`RedactingFilter` on every handler of the root logger (console and Hydra's job log)."""
    secrets = secret_values()
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter(secrets))


def scrub_yaml_files(directory: Path, pattern: str = "*.yaml") -> None:
    """Rewrite the YAML files Hydra saved in ``directory`` with secrets masked."""
    from omegaconf import OmegaConf

    secrets = secret_values()
    for path in sorted(Path(directory).glob(pattern)):
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        clean = redact(data, secrets)
        if clean != data:
            from distill.cache import write_atomic

            write_atomic(path, OmegaConf.to_yaml(OmegaConf.create(clean)))


def redact_argv() -> None:
    """Mask secrets in ``sys.argv`` once Hydra has parsed it: libraries record the command line
    (wandb stores it with every run) and a literal ``api_key=...`` override would go with it."""
    secrets = secret_values()
    sys.argv[:] = [redact_override(arg, secrets) for arg in sys.argv]


class ScrubSavedConfig(Callback):
    """Hydra callback: Hydra writes ``.hydra/{config,hydra,overrides}.yaml`` just before
    ``on_job_start``; mask secrets there before the task runs, and in every log line after."""

    def on_job_start(self, config, **kwargs: Any) -> None:
        install_log_redaction()
        redact_argv()
        subdir = config.hydra.output_subdir
        if subdir is not None:
            scrub_yaml_files(Path(config.hydra.runtime.output_dir) / str(subdir))
        if (
            getattr(config.hydra.mode, "name", None) == "MULTIRUN"
        ):  # the launcher saved the sweep's config beside the trials
            scrub_yaml_files(Path(config.hydra.sweep.dir), "multirun.yaml")

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        install_log_redaction()
        redact_argv()

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        scrub_yaml_files(Path(config.hydra.sweep.dir), "*.yaml")  # multirun.yaml, optimization_results.yaml
