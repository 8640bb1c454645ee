"""Static checks of .github/: actionlint (with shellcheck on every `run:`), the GitHub
workflow and Dependabot schemas, and CI's own rules (SHA pins, least privilege, time limits,
the same steps as `python dev.py ci`). Nothing runs on GitHub from here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import dev
from tests.infra.conftest import ROOT, cached_tool, load_yaml, output, run, venv_tool

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
CI = ROOT / ".github" / "workflows" / "ci.yml"
USES = re.compile(r"^\s*(?:-\s+)?uses:\s*(\S+)(.*)$", re.MULTILINE)


@pytest.fixture(scope="module")
def ci() -> dict[str, Any]:
    return load_yaml(CI)


def test_actionlint_passes():
    """actionlint (expressions, job graph, action inputs, shellcheck of each run script)
    reports nothing on the workflows."""
    assert venv_tool("shellcheck")  # actionlint only lints run scripts when it finds shellcheck
    done = run([venv_tool("actionlint"), "-no-color", *WORKFLOWS])
    assert done.returncode == 0, output(done)


def test_actionlint_reports_a_bad_workflow(tmp_path: Path):
    """Control: actionlint fails a workflow with an unknown runner key, an untrusted input in
    a script and an unquoted command substitution (the last one found through shellcheck)."""
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    timeout: 5\n    steps:\n"
        "      - run: echo $(ls) ${{ github.event.head_commit.message }}\n"
    )
    done = run([venv_tool("actionlint"), "-no-color", bad])
    assert done.returncode != 0
    for finding in ("timeout", "potentially untrusted", "SC2046"):
        assert finding in done.stdout, f"{finding} not reported:\n{done.stdout}"


def test_workflows_and_dependabot_match_their_schemas(tmp_path: Path):
    """check-jsonschema validates every workflow (vendor.github-workflows) and dependabot.yml
    (vendor.dependabot); a workflow with a misspelt job key fails the same check."""
    checker = venv_tool("check-jsonschema")
    done = run([checker, "--builtin-schema", "vendor.github-workflows", *WORKFLOWS])
    assert done.returncode == 0, output(done)
    dependabot = ROOT / ".github" / "dependabot.yml"
    done = run([checker, "--builtin-schema", "vendor.dependabot", dependabot])
    assert done.returncode == 0, output(done)
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    runs_on: ubuntu-24.04\n    steps: []\n")
    assert run([checker, "--builtin-schema", "vendor.github-workflows", bad]).returncode != 0


def test_every_action_is_pinned_by_commit_sha():
    """Each `uses:` names an action at a full 40-hex commit SHA followed by a comment with
    the release it stands for (no tags, no branches)."""
    for workflow in WORKFLOWS:
        uses = USES.findall(workflow.read_text())
        assert uses, f"{workflow.name}: no actions?"
        for ref, comment in uses:
            assert re.fullmatch(r"[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}", ref), ref
            assert re.search(r"#\s*v\d+(\.\d+)*", comment), f"{ref}: no # vX.Y comment"


def test_least_privilege_time_limits_and_concurrency(ci):
    """Top-level permissions are contents: read and no job widens them; every job has
    timeout-minutes; one run per ref (a newer push cancels the older run)."""
    assert ci["permissions"] == {"contents": "read"}
    assert "${{ github.ref }}" in ci["concurrency"]["group"]
    assert ci["concurrency"]["cancel-in-progress"] is True
    for name, job in ci["jobs"].items():
        assert "permissions" not in job, f"{name} widens permissions"
        assert 0 < job["timeout-minutes"] <= 90, f"{name}: timeout-minutes"
        for step in job["steps"]:
            if str(step.get("uses", "")).startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False


def test_ci_jobs_are_the_dev_py_ci_steps(ci):
    """The workflow's jobs are exactly `python dev.py ci`'s steps, in the same order, so the
    local run and CI cannot drift apart."""
    assert tuple(ci["jobs"]) == dev.CI_STEPS


def test_ci_jobs_run_the_same_commands_as_dev_py(ci):
    """typecheck, security, test and terraform call dev.py (terraform with --require: an
    unreachable registry fails CI); lint runs ruff check + black --check at the versions
    pinned in requirements-dev.txt; promtool checks and unit-tests alerts/."""
    scripts = {
        name: "\n".join(step.get("run", "") for step in job["steps"])
        for name, job in ci["jobs"].items()
    }
    assert "python dev.py typecheck" in scripts["typecheck"]
    assert "python dev.py security --require-audit" in scripts["security"]
    assert "python dev.py test" in scripts["test"]
    assert "requirements-dev.txt" in scripts["lint"]
    assert "ruff check ." in scripts["lint"] and "black --check ." in scripts["lint"]
    assert "promtool check rules alerts/*-rules.yml" in scripts["promtool"]
    assert "promtool test rules alerts/tests/" in scripts["promtool"]
    assert "python dev.py terraform --require" in scripts["terraform"]
    pinned = (ROOT / "requirements-dev.txt").read_text()
    assert re.search(r"^ruff==", pinned, re.M) and re.search(r"^black==", pinned, re.M)


def test_ci_builds_scans_and_inventories_both_targets(ci):
    """The build job builds every final target of the Dockerfile (cpu and cuda) without
    pushing, then scans the very image it built with trivy (failing on a fixable CRITICAL)
    and writes its SBOM; the trivy binary is pinned to a release, not "latest"."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    targets = set(re.findall(r"^FROM \S+ AS (cpu|cuda)$", dockerfile, re.M))
    job = ci["jobs"]["build"]
    assert {entry["target"] for entry in job["strategy"]["matrix"]["include"]} == targets
    steps = {str(step.get("uses", "")).split("@")[0]: step for step in job["steps"]}
    build = steps["docker/build-push-action"]["with"]
    assert build["target"] == "${{ matrix.target }}" and build["push"] is False
    assert build["load"] is True
    image = build["tags"]
    scan = steps["aquasecurity/trivy-action"]["with"]
    assert (
        scan["image-ref"] == image and scan["exit-code"] == "1" and "CRITICAL" in scan["severity"]
    )
    assert re.fullmatch(r"v\d+\.\d+\.\d+", scan["version"]) and scan["version"] != "v0.69.4"
    sbom = steps["anchore/sbom-action"]["with"]
    assert sbom["image"] == image and sbom["format"] in {"spdx-json", "cyclonedx-json"}


def test_zizmor_finds_nothing():
    """zizmor --offline (template injection, credential persistence, excessive permissions,
    unpinned uses, Dependabot cooldowns...) reports nothing on .github/."""
    done = run([cached_tool("zizmor"), "--offline", "--no-progress", ROOT / ".github"])
    assert done.returncode == 0, output(done)


def test_zizmor_reports_a_bad_workflow(tmp_path: Path):
    """Control: zizmor fails a workflow that checks out with persisted credentials and pipes
    an attacker-controlled title into a shell."""
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        "on: pull_request_target\npermissions: write-all\njobs:\n  a:\n    runs-on: ubuntu-24.04\n"
        "    steps:\n      - uses: actions/checkout@v4\n"
        '      - run: echo "${{ github.event.pull_request.title }}"\n'
    )
    done = run([cached_tool("zizmor"), "--offline", "--no-progress", tmp_path / ".github"])
    assert done.returncode != 0
    for audit in ("template-injection", "unpinned-uses", "artipacked"):
        assert audit in done.stdout + done.stderr, audit


def test_dependabot_waits_before_proposing_updates():
    """Every Dependabot ecosystem has a cooldown of at least 7 days."""
    config = load_yaml(ROOT / ".github" / "dependabot.yml")
    for update in config["updates"]:
        assert update["cooldown"]["default-days"] >= 7, update["package-ecosystem"]
