"""Secrets are masked in configs, overrides, logs and run records; run_info records the code."""

import logging
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from distill import run_info as run_info_mod
from distill import secrets
from distill.cli.resolvers import sweep_group, wandb_offline
from distill.run_info import flat_hparams, git_state, package_versions, run_info


def git(repo, *args: str) -> str:
    """git itself, run directly: the independent record that git_state() must agree with."""
    config = ["-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]
    proc = subprocess.run(["git", *config, "-C", str(repo), *args], capture_output=True, text=True, check=True)
    return proc.stdout.strip()


@pytest.fixture
def code_repo(tmp_path, monkeypatch):
    """A checkout of known history standing in for the package's own: one commit of one file."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "train.py").write_text("print('v1')\n")
    git(repo, "add", "train.py")
    git(repo, "commit", "-q", "-m", "v1")
    monkeypatch.setattr(run_info_mod, "REPO", repo)
    return repo


def test_secret_values_come_from_secret_named_env_vars():
    env = {
        "HF_TOKEN": "hf_abcdefgh",
        "WANDB_API_KEY": "k" * 40,
        "DB_PASSWORD": "pw123456",
        "AWS_SECRET_ACCESS_KEY": "s" * 20,
        "PATH": "/usr/bin:/bin",
        "SHORT_TOKEN": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    assert set(secrets.secret_values(env)) == {"hf_abcdefgh", "k" * 40, "pw123456", "s" * 20}


def test_redact_masks_values_and_secret_keys_but_keeps_interpolations(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_supersecret")
    cfg = {
        "hub": {"token": "literal-token-value", "api_key": "${oc.env:HF_TOKEN}", "data_key": "abc123hash"},
        "tok": {"eos_token": "</s>", "hf_token": "hf_literal_value"},
        "note": "uses hf_supersecret inside",
        "overrides": ["+hub.api_key=xyz123456", "optim.lr=0.1"],
        "n": 3,
    }
    out = secrets.redact(cfg)
    assert out["hub"] == {"token": "***", "api_key": "${oc.env:HF_TOKEN}", "data_key": "abc123hash"}
    assert out["tok"] == {"eos_token": "</s>", "hf_token": "***"}  # vocabulary tokens are not secrets
    assert out["note"] == "uses *** inside" and out["n"] == 3
    assert out["overrides"] == ["+hub.api_key=***", "optim.lr=0.1"]


def test_log_filter_masks_formatted_messages(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret-123456")
    handler = logging.FileHandler(tmp_path / "run.log")
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        secrets.install_log_redaction()
        logging.getLogger("x").warning("key is %s", "wandb-secret-123456")
        logging.getLogger("x").warning("#0 : optim.lr=0.1 +hub.api_key=typed-on-cli x=1")
        handler.flush()
    finally:
        root.removeHandler(handler)
    assert (tmp_path / "run.log").read_text() == "key is ***\n#0 : optim.lr=0.1 +hub.api_key=*** x=1\n"


def test_scrub_saved_yaml_and_argv(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", "hf_scrubme1234")
    (tmp_path / "config.yaml").write_text("a: hf_scrubme1234\nb: ${oc.env:HF_TOKEN}\n")
    (tmp_path / "overrides.yaml").write_text("- +x.password=hunter22\n- +y=hf_scrubme1234\n")
    secrets.scrub_yaml_files(tmp_path)
    assert OmegaConf.to_container(OmegaConf.load(tmp_path / "config.yaml")) == {"a": "***", "b": "${oc.env:HF_TOKEN}"}
    assert OmegaConf.to_container(OmegaConf.load(tmp_path / "overrides.yaml")) == ["+x.password=***", "+y=***"]
    monkeypatch.setattr(sys, "argv", ["distill-train", "+x.api_key=abcdefgh", "z=hf_scrubme1234"])
    secrets.redact_argv()
    assert sys.argv == ["distill-train", "+x.api_key=***", "z=***"]


def test_git_state_is_the_checkouts_commit_and_tracked_changes(code_repo):
    commit = git(code_repo, "rev-parse", "HEAD")
    assert len(commit) == 40 and git_state() == {"commit": commit, "dirty": False}
    (code_repo / "notes.txt").write_text("untracked files are not the code that ran\n")
    assert git_state() == {"commit": commit, "dirty": False}
    (code_repo / "train.py").write_text("print('v2')\n")  # an uncommitted edit of tracked code
    assert git_state() == {"commit": commit, "dirty": True}
    git(code_repo, "commit", "-q", "-am", "v2")
    assert git_state() == {"commit": git(code_repo, "rev-parse", "HEAD"), "dirty": False}
    assert git_state()["commit"] != commit


def test_git_state_outside_a_checkout_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # git must not find a repository above it
    monkeypatch.setattr(run_info_mod, "REPO", tmp_path)
    assert git_state() == {"commit": None, "dirty": None}


def test_run_info_records_code_versions_and_masked_config(monkeypatch, code_repo):
    monkeypatch.setenv("HF_TOKEN", "hf_runinfo_secret")
    cfg = OmegaConf.create({"optim": {"lr": 0.1}, "hub": {"token": "${oc.env:HF_TOKEN}"}})
    info = run_info(cfg)
    assert info["config"] == {"optim": {"lr": 0.1}, "hub": {"token": "***"}}  # resolved, then masked
    assert info["versions"]["torch"] == package_versions()["torch"] and "python" in info["versions"]
    (code_repo / "train.py").write_text("print('edited')\n")
    assert info["git"]["commit"] == git(code_repo, "rev-parse", "HEAD")
    assert info["git"]["dirty"] is False  # recorded when run_info ran, before the edit
    assert run_info(cfg)["git"]["dirty"] is True
    flat = flat_hparams(info)
    assert flat["config/optim/lr"] == 0.1 and flat["git/commit"] == info["git"]["commit"]


def test_wandb_offline_without_key_or_when_asked(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_offline() is True
    monkeypatch.delenv("WANDB_MODE")
    assert wandb_offline() is False
    assert sweep_group() is None  # not in a Hydra multirun: no group
