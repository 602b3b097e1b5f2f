"""The names in the config tree, as Hydra's loader lists them (the candidates of "did you mean ...?")."""

from __future__ import annotations

from distill.config import tree


def test_the_cli_composes_the_tree_named_here():
    from distill.cli.train import CONFIG_DIR

    assert tree.CONFIG_DIR == CONFIG_DIR


def test_groups_include_nested_and_hydras_own():
    groups = tree.groups()
    assert {"data", "data/filters", "student", "debug", "experiment", "hydra/launcher", "hydra/sweeper"} <= set(groups)


def test_group_options():
    assert {"depth", "width", "every_other_layer", "pretrained"} <= set(tree.group_options("student"))
    assert {"code", "dedup", "web", "none"} <= set(tree.group_options("data/filters"))
    assert {"slurm", "local", "basic"} <= set(tree.group_options("hydra/launcher"))
    assert tree.group_options("no_such_group") == []
