"""Pre-stage the served model into the shared model cache before the gateway starts.

Runs as the gateway pod's init container (overlays/gpu, mounted from a ConfigMap) in the
gateway image, which has huggingface_hub. It downloads ``MODEL_REPO_ID`` at the pinned commit
``MODEL_REVISION`` into ``PRESTAGE_ROOT/<repo id>/<revision>`` on the model-cache volume and
checks that ``MODEL_NAME`` (what the gateway loads) is that directory, so the gateway serves
exactly the pinned revision and never reaches the hub itself (HF_HUB_OFFLINE=1 there).

Contract:

* a revision is a 40-hex commit id: a branch or tag could move under a running service;
* a directory holding ``.prestaged.json`` is complete: later pods (and restarts) skip the
  download, so only the first pod on a new cache pays for it;
* downloads land in ``PRESTAGE_ROOT/.partial/<pod>`` (one per pod: two pods never write the
  same files; a restarted init container resumes its own) and are renamed into place, so a
  half-written model is never visible; the pod that loses the race drops its copy;
* partial downloads older than a day (pods that died) are removed;
* it gives up after ``PRESTAGE_TIMEOUT_S`` (exit 1; Kubernetes retries the init container);
* the hub token (optional: Secret llm-gateway-hf-token, mounted as a file) is read by
  huggingface_hub from ``HF_TOKEN_PATH``.

Usage: ``python prestage_model.py`` (everything from the environment).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

MARKER = ".prestaged.json"
PARTIAL = ".partial"
STALE_AFTER_S = 24 * 3600
REVISION = re.compile(r"[0-9a-f]{40}")
REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")

Download = Callable[..., Any]


def target_dir(root: Path, repo_id: str, revision: str) -> Path:
    """Where ``repo_id`` at ``revision`` is staged (and what MODEL_NAME must name)."""
    return root / repo_id / revision


def check_pins(repo_id: str, revision: str) -> None:
    """Refuse a repo id that is not ``org/name`` and a revision that is not a commit id."""
    if not REPO_ID.fullmatch(repo_id):
        raise ValueError(f"MODEL_REPO_ID={repo_id!r} is not a Hugging Face id like org/name")
    if not REVISION.fullmatch(revision):
        raise ValueError(
            f"MODEL_REVISION={revision!r} is not a 40-hex commit id: pin the model to a "
            "commit (a branch or tag can move under a running service)"
        )


def stage(root: Path, repo_id: str, revision: str, download: Download, worker: str) -> Path:
    """Make ``target_dir(root, repo_id, revision)`` hold the complete snapshot; returns it."""
    check_pins(repo_id, revision)
    final = target_dir(root, repo_id, revision)
    if (final / MARKER).is_file():
        print(f"{repo_id}@{revision} already staged in {final}", flush=True)
        return final
    remove_stale_partials(root / PARTIAL)
    partial = root / PARTIAL / worker
    partial.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    download(repo_id=repo_id, revision=revision, local_dir=partial)
    info = {"repo_id": repo_id, "revision": revision, "seconds": round(time.monotonic() - started)}
    (partial / MARKER).write_text(json.dumps(info))
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        partial.rename(final)
    except OSError:
        if not (final / MARKER).is_file():
            raise
        shutil.rmtree(partial, ignore_errors=True)  # another pod staged it first
    print(f"staged {repo_id}@{revision} in {final} ({info['seconds']} s)", flush=True)
    return final


def remove_stale_partials(partials: Path, now: float | None = None) -> None:
    """Drop partial downloads untouched for a day (left by pods that died)."""
    if not partials.is_dir():
        return
    limit = (now if now is not None else time.time()) - STALE_AFTER_S
    for entry in partials.iterdir():
        if entry.stat().st_mtime < limit:
            shutil.rmtree(entry, ignore_errors=True)


def run(env: dict[str, str], download: Download) -> Path:
    """Stage what the environment names and check MODEL_NAME points at it."""
    root = Path(env.get("PRESTAGE_ROOT", "/models/prestaged"))
    repo_id, revision = env["MODEL_REPO_ID"], env["MODEL_REVISION"]
    expected = target_dir(root, repo_id, revision)
    if env.get("MODEL_NAME") != str(expected):
        raise ValueError(
            f"MODEL_NAME={env.get('MODEL_NAME')!r} must be {str(expected)!r}, the staged "
            "snapshot of MODEL_REPO_ID at MODEL_REVISION"
        )
    worker = env.get("POD_NAME") or uuid.uuid4().hex
    return stage(root, repo_id, revision, download, worker)


def _timeout(signum: int, frame: object) -> None:
    raise TimeoutError("model pre-staging ran past PRESTAGE_TIMEOUT_S")


def main() -> int:
    from huggingface_hub import snapshot_download

    signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(int(os.environ.get("PRESTAGE_TIMEOUT_S", "900")))
    try:
        run(dict(os.environ), snapshot_download)
    except (KeyError, ValueError, TimeoutError, OSError) as exc:
        print(f"pre-staging failed: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
