"""Checks of .pre-commit-config.yaml: it validates, every hook is local (nothing is cloned),
and every hook's program is installed by `python dev.py setup`."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.infra.conftest import ROOT, load_yaml, output, run, venv_tool
from tests.support.requirements import missing

CONFIG = ROOT / ".pre-commit-config.yaml"
# The YAML files of the delivery: what the check-yaml hook sees on a commit of them.
DELIVERY_YAML = [
    ROOT / "docker-compose.yml",
    ROOT / ".pre-commit-config.yaml",
    *sorted((ROOT / ".github").rglob("*.yml")),
    *sorted((ROOT / "infra" / "k8s").rglob("*.yaml")),
]


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return load_yaml(CONFIG)


def hooks(config: dict[str, Any]) -> list[dict[str, Any]]:
    return [hook for repo in config["repos"] for hook in repo["hooks"]]


def test_config_validates():
    """pre-commit validate-config accepts the file."""
    done = run([venv_tool("pre-commit"), "validate-config", CONFIG])
    assert done.returncode == 0, output(done)


def test_every_hook_is_local_and_runs_an_installed_program(config):
    """All repos are `local` with `language: system` (no network, no hook environments), and
    each hook's program exists: .venv/bin/... from requirements-dev.txt, or terraform."""
    assert [repo["repo"] for repo in config["repos"]] == ["local"]
    for hook in hooks(config):
        assert hook["language"] == "system", hook["id"]
        program = shlex.split(hook["entry"])[0]
        if program.startswith(".venv/bin/"):
            exe = Path(venv_tool(program.rsplit("/", 1)[1]))
            assert (ROOT / program).exists() or exe.exists(), f"{hook['id']}: {program} missing"
        elif shutil.which(program) is None:
            missing(f"{hook['id']}: {program} is not on PATH; installing it lifts this skip")


def test_hooks_cover_lint_types_and_hygiene(config):
    """ruff, black and mypy run as hooks (mypy at pre-push, where its ~10 s is bearable), with
    trailing whitespace, end of file, YAML, large files, merge conflicts and private keys."""
    ids = {hook["id"]: hook for hook in hooks(config)}
    expected = {
        "ruff", "black", "mypy", "trailing-whitespace", "end-of-file-fixer", "check-yaml",
        "check-added-large-files", "check-merge-conflict", "detect-private-key",
    }  # fmt: skip
    assert expected <= set(ids)
    assert ids["mypy"]["stages"] == ["pre-push"]
    assert set(config["default_install_hook_types"]) == {"pre-commit", "pre-push"}
    assert "--check" in ids["black"]["entry"]


def test_check_yaml_hook_passes_the_delivery_files(config, tmp_path: Path):
    """The check-yaml hook's command accepts every delivery YAML file, and fails a broken one."""
    entry = next(h["entry"] for h in hooks(config) if h["id"] == "check-yaml")
    program, *args = shlex.split(entry)
    exe = venv_tool(program.rsplit("/", 1)[1])
    done = run([exe, *args, *DELIVERY_YAML])
    assert done.returncode == 0, output(done)
    broken = tmp_path / "broken.yaml"
    broken.write_text("key: [unclosed\n")
    assert run([exe, *args, broken]).returncode != 0
