"""Pre-stage the served model into the shared model cache before the gateway starts.

Runs as an init container (mounted from the ConfigMap of components/model-cache) in the
gateway image, which has huggingface_hub: in the gateway pods of overlays/gpu and the engine
pods of overlays/router, and, for the tokenizer only, in the router pods of overlays/router.
It downloads ``MODEL_REPO_ID`` at the pinned commit
``MODEL_REVISION`` into ``PRESTAGE_ROOT/<repo id>/<revision>`` on the model-cache volume and
checks that ``MODEL_NAME`` (what the gateway loads) is that directory, so the gateway serves
exactly the pinned revision and never reaches the hub itself (HF_HUB_OFFLINE=1 there).

Contract:

* a revision is a 40-hex commit id: a branch or tag could move under a running service;
* a directory holding ``.prestaged.json`` is complete: later pods (and restarts) skip the
  download, so only the first pod on a new cache pays for it;
* ``PRESTAGE_ALLOW_PATTERNS`` (comma-separated globs, e.g. ``tokenizer*,config.json``)
  stages only the matching files (huggingface_hub's ``allow_patterns``): a router needs the
  tokenizer, not the weights. The marker records them, and a part never passes for more: a
  request for other files than a staged part fails (a whole snapshot serves any part);
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


def stage(
    root: Path,
    repo_id: str,
    revision: str,
    download: Download,
    worker: str,
    patterns: list[str] | None = None,
) -> Path:
    """Make ``target_dir(root, repo_id, revision)`` hold the complete snapshot (or, with
    ``patterns``, the files matching them); returns it."""
    check_pins(repo_id, revision)
    final = target_dir(root, repo_id, revision)
    if (final / MARKER).is_file():
        check_covers(final, patterns)
        print(f"{repo_id}@{revision} already staged in {final}", flush=True)
        return final
    remove_stale_partials(root / PARTIAL)
    partial = root / PARTIAL / worker
    partial.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    only = {"allow_patterns": patterns} if patterns else {}
    download(repo_id=repo_id, revision=revision, local_dir=partial, **only)
    info = {"repo_id": repo_id, "revision": revision, "seconds": round(time.monotonic() - started)}
    info["allow_patterns"] = patterns or None
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


def check_covers(staged: Path, patterns: list[str] | None) -> None:
    """Refuse a staged part (its marker's allow_patterns) for the whole snapshot or another
    part: the gateway would load a model without its weights."""
    had = json.loads((staged / MARKER).read_text()).get("allow_patterns")
    if had is not None and had != patterns:
        raise ValueError(
            f"{staged} holds only {had} (PRESTAGE_ALLOW_PATTERNS), not "
            f"{patterns or 'the whole snapshot'}: use another PRESTAGE_ROOT or remove it"
        )


def allow_patterns(env: dict[str, str]) -> list[str] | None:
    """PRESTAGE_ALLOW_PATTERNS as a list (unset or blank: the whole snapshot)."""
    patterns = [p.strip() for p in env.get("PRESTAGE_ALLOW_PATTERNS", "").split(",")]
    return [p for p in patterns if p] or None


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
    return stage(root, repo_id, revision, download, worker, allow_patterns(env))


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
