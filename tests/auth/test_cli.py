"""``python -m app.auth.cli``: new keys are printed once, stored hashed, and usable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.auth.cli import KEY_PREFIX, main
from app.auth.keys import KeyStore, hash_key
from app.auth.settings import AuthSettings


def new_key(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["new", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def store_for(path: Path) -> KeyStore:
    return KeyStore.from_settings(AuthSettings(enable_auth=True, api_keys_file=path))


def test_new_prints_the_key_once_and_stores_only_its_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """stdout is the key alone; the file holds its SHA-256 and the limits, not the key."""
    path = tmp_path / "keys.yaml"
    status, out, err = new_key(
        capsys, "--name", "alice", "--rpm", "30", "--tpm", "9000", "--file", str(path)
    )
    key = out.strip()
    assert status == 0 and out.count("\n") == 1 and key.startswith(KEY_PREFIX)
    assert len(key) >= 40 and key not in err
    text = path.read_text()
    assert key not in text and hash_key(key) in text
    principal = store_for(path).authenticate(f"Bearer {key}")
    assert (principal.name, principal.limits.rpm, principal.limits.tpm) == ("alice", 30, 9000)


def test_new_sets_tier_models_and_admin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--tier, repeated --model and --admin end up on the key's principal."""
    path = tmp_path / "keys.yaml"
    argv = ["--name", "ops", "--tier", "premium", "--model", "a", "--model", "b", "--admin"]
    _, out, _ = new_key(capsys, *argv, "--file", str(path))
    principal = store_for(path).authenticate(f"Bearer {out.strip()}")
    assert principal.priority == 0 and principal.is_admin
    assert principal.models == frozenset({"a", "b"})


def test_keys_are_random(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two new keys differ, and both authenticate as their own names."""
    path = tmp_path / "keys.yaml"
    keys = [new_key(capsys, "--name", name, "--file", str(path))[1].strip() for name in "ab"]
    assert keys[0] != keys[1]
    store = store_for(path)
    assert [store.authenticate(f"Bearer {key}").name for key in keys] == ["a", "b"]


def test_append_keeps_comments_and_indentation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing file keeps its comments; the new item follows the items' indentation."""
    path = tmp_path / "keys.yaml"
    original = (
        f"# team keys\nkeys:\n# the first one\n- name: old  # legacy\n  sha256: {hash_key('x')}\n"
    )
    path.write_text(original)
    status, out, _ = new_key(capsys, "--name", "new", "--file", str(path))
    assert status == 0 and path.read_text().startswith(original)
    assert "\n- name: new\n" in path.read_text()
    assert store_for(path).authenticate(f"Bearer {out.strip()}").name == "new"


def test_taken_name_is_refused_and_nothing_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A name already in the file → exit 1, file unchanged, no key printed."""
    path = tmp_path / "keys.yaml"
    new_key(capsys, "--name", "alice", "--file", str(path))
    before = path.read_text()
    status, out, err = new_key(capsys, "--name", "alice", "--file", str(path))
    assert status == 1 and out == "" and "already exists" in err
    assert path.read_text() == before


def test_invalid_name_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A name unfit for logs and Redis keys → exit 2, and no file is created."""
    path = tmp_path / "keys.yaml"
    status, out, err = new_key(capsys, "--name", "bad name", "--file", str(path))
    assert status == 2 and out == "" and "name" in err and not path.exists()


def test_keys_block_must_be_last(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """If 'keys:' is not the file's last block, appending would misplace the entry: refused."""
    path = tmp_path / "keys.yaml"
    original = f"keys:\n  - name: old\n    sha256: {hash_key('x')}\nversion: 1\n"
    path.write_text(original)
    status, out, err = new_key(capsys, "--name", "new", "--file", str(path))
    assert status == 1 and out == "" and "error" in err
    assert path.read_text() == original


def test_file_defaults_to_api_keys_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --file the CLI writes to API_KEYS_FILE."""
    path = tmp_path / "keys.yaml"
    monkeypatch.setenv("API_KEYS_FILE", str(path))
    status, _, _ = new_key(capsys, "--name", "alice")
    assert status == 0 and "alice" in path.read_text()


def test_list_shows_entries_without_digests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``list`` names each key with its tier and limits, never its digest."""
    path = tmp_path / "keys.yaml"
    _, out, _ = new_key(capsys, "--name", "alice", "--tpm", "500", "--file", str(path))
    assert main(["list", "--file", str(path)]) == 0
    listed = capsys.readouterr().out
    assert "alice" in listed and "tpm=500" in listed and hash_key(out.strip()) not in listed


def test_runs_as_a_module(tmp_path: Path) -> None:
    """``python -m app.auth.cli new`` works as dev.py will call it."""
    path = tmp_path / "keys.yaml"
    command = [sys.executable, "-m", "app.auth.cli", "new", "--name", "ci", "--file", str(path)]
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        command, cwd=root, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert hash_key(done.stdout.strip()) in path.read_text()
