"""infra/k8s/components/model-cache/prestage_model.py, the gpu pods' init container, against a fake
hub download (the one boundary that cannot be real here): what it stages, when it skips,
what it refuses, and how two pods racing on the shared cache end."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.infra.conftest import K8S

SCRIPT = K8S / "components" / "model-cache" / "prestage_model.py"
REPO = "Qwen/Qwen2.5-1.5B-Instruct"
REVISION = "989aa7980e4cf806f80c7fef2b1adb7bc71aa306"


@pytest.fixture(scope="module")
def prestage() -> ModuleType:
    spec = importlib.util.spec_from_file_location("prestage_model", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeHub:
    """Records downloads and writes what snapshot_download would: a config.json, a tokenizer
    and the weights, or only the files ``allow_patterns`` matches."""

    FILES = ("config.json", "tokenizer.json", "model.safetensors")

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, *, repo_id: str, revision: str, local_dir: Path, **only: Any) -> str:
        self.calls.append({"repo_id": repo_id, "revision": revision, "local_dir": local_dir,
                           **only})  # fmt: skip
        patterns = only.get("allow_patterns") or ["*"]
        for name in self.FILES:
            if any(fnmatch.fnmatch(name, pattern) for pattern in patterns):
                (Path(local_dir) / name).write_text('{"model_type": "qwen2"}')
        return str(local_dir)


def test_stages_once_then_reuses_the_snapshot(prestage, tmp_path: Path):
    """The first pod downloads the pinned revision into root/<repo>/<revision> with a
    completion marker; the next finds it and downloads nothing."""
    hub = FakeHub()
    first = prestage.stage(tmp_path, REPO, REVISION, hub, "pod-a")
    assert first == tmp_path / REPO / REVISION
    assert (first / "config.json").is_file() and (first / prestage.MARKER).is_file()
    assert [call["revision"] for call in hub.calls] == [REVISION]
    assert prestage.stage(tmp_path, REPO, REVISION, hub, "pod-b") == first
    assert len(hub.calls) == 1
    assert not list((tmp_path / prestage.PARTIAL).iterdir())


@pytest.mark.parametrize(
    ("repo", "revision"),
    [(REPO, "main"), (REPO, "v1.0"), (REPO, REVISION[:12]), ("no-org", REVISION)],
)
def test_refuses_moving_or_malformed_pins(prestage, tmp_path: Path, repo: str, revision: str):
    """A branch, a tag, a short hash or a repo id without org fails before any download."""
    hub = FakeHub()
    with pytest.raises(ValueError):
        prestage.stage(tmp_path, repo, revision, hub, "pod-a")
    assert not hub.calls


def test_losing_a_race_keeps_the_winners_copy(prestage, tmp_path: Path):
    """When another pod renamed its complete copy into place during our download, ours is
    dropped and theirs is used."""

    def racing(*, repo_id: str, revision: str, local_dir: Path) -> None:
        FakeHub()(repo_id=repo_id, revision=revision, local_dir=local_dir)
        winner = tmp_path / repo_id / revision
        winner.mkdir(parents=True)
        (winner / prestage.MARKER).write_text("{}")
        (winner / "config.json").write_text("winner")

    final = prestage.stage(tmp_path, REPO, REVISION, racing, "pod-b")
    assert (final / "config.json").read_text() == "winner"
    assert not (tmp_path / prestage.PARTIAL / "pod-b").exists()


def test_a_half_written_target_is_not_taken_for_a_snapshot(prestage, tmp_path: Path):
    """A target directory without the marker (a crashed copy) fails loudly instead of being
    served."""
    (tmp_path / REPO / REVISION).mkdir(parents=True)
    (tmp_path / REPO / REVISION / "junk").write_text("x")
    with pytest.raises(OSError):
        prestage.stage(tmp_path, REPO, REVISION, FakeHub(), "pod-a")


def test_stale_partials_are_removed(prestage, tmp_path: Path):
    """Partial downloads untouched for a day (dead pods) go; recent ones stay."""
    partials = tmp_path / prestage.PARTIAL
    old, fresh = partials / "dead-pod", partials / "live-pod"
    old.mkdir(parents=True)
    fresh.mkdir()
    day_ago = time.time() - prestage.STALE_AFTER_S - 60
    os.utime(old, (day_ago, day_ago))
    prestage.remove_stale_partials(partials)
    assert not old.exists() and fresh.exists()


def test_model_name_must_be_the_staged_directory(prestage, tmp_path: Path):
    """run() refuses a MODEL_NAME other than PRESTAGE_ROOT/MODEL_REPO_ID/MODEL_REVISION, so
    the gateway cannot silently serve something else than the pin."""
    env = {"PRESTAGE_ROOT": str(tmp_path), "MODEL_REPO_ID": REPO, "MODEL_REVISION": REVISION,
           "POD_NAME": "pod-a", "MODEL_NAME": REPO}  # fmt: skip
    with pytest.raises(ValueError, match="MODEL_NAME"):
        prestage.run(env, FakeHub())
    env["MODEL_NAME"] = str(tmp_path / REPO / REVISION)
    assert prestage.run(env, FakeHub()) == tmp_path / REPO / REVISION


def test_main_exits_non_zero_with_one_line(tmp_path: Path):
    """As the init container runs it: a bad pin exits 1 with one clear line on stderr (so
    Kubernetes retries and `kubectl logs -c prestage-model` says why)."""
    env = {**os.environ, "PRESTAGE_ROOT": str(tmp_path), "MODEL_REPO_ID": REPO,
           "MODEL_REVISION": "main", "MODEL_NAME": f"{tmp_path}/{REPO}/main"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stderr.strip().startswith("pre-staging failed: MODEL_REVISION='main'")


def test_allow_patterns_stage_only_the_tokenizer(prestage, tmp_path: Path):
    """PRESTAGE_ALLOW_PATTERNS reaches the download as allow_patterns: only the matching
    files are staged (no weights), the marker says which, and the next pod asking for the
    same part downloads nothing."""
    env = {"PRESTAGE_ROOT": str(tmp_path), "MODEL_REPO_ID": REPO, "MODEL_REVISION": REVISION,
           "POD_NAME": "router-a", "MODEL_NAME": str(tmp_path / REPO / REVISION),
           "PRESTAGE_ALLOW_PATTERNS": " tokenizer*, config.json ,"}  # fmt: skip
    hub = FakeHub()
    staged = prestage.run(env, hub)
    assert hub.calls[0]["allow_patterns"] == ["tokenizer*", "config.json"]
    assert sorted(p.name for p in staged.iterdir()) == [
        prestage.MARKER, "config.json", "tokenizer.json"]  # fmt: skip
    marker = json.loads((staged / prestage.MARKER).read_text())
    assert marker["allow_patterns"] == ["tokenizer*", "config.json"]
    assert prestage.run({**env, "POD_NAME": "router-b"}, hub) == staged
    assert len(hub.calls) == 1


def test_a_staged_part_never_passes_for_the_whole_snapshot(prestage, tmp_path: Path):
    """A tokenizer-only directory on the same root refuses a pod that needs the weights (or
    another part), before any download, saying why; a whole snapshot serves a part."""
    hub = FakeHub()
    prestage.stage(tmp_path, REPO, REVISION, hub, "router-a", ["tokenizer*"])
    for patterns in (None, ["tokenizer*", "config.json"]):
        with pytest.raises(ValueError, match="holds only"):
            prestage.stage(tmp_path, REPO, REVISION, hub, "engine-a", patterns)
    assert len(hub.calls) == 1
    whole = tmp_path / "whole"
    prestage.stage(whole, REPO, REVISION, hub, "engine-a")
    assert prestage.stage(whole, REPO, REVISION, hub, "router-a", ["tokenizer*"]).is_dir()
    assert len(hub.calls) == 2 and "allow_patterns" not in hub.calls[1]
