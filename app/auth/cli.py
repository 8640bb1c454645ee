"""``python -m app.auth.cli``: manage ``API_KEYS_FILE`` (``dev.py keys`` calls this).

``new`` makes a random key, appends its hashed entry to the file and prints the key on
stdout, once: only its SHA-256 is kept, so a lost key cannot be recovered, only replaced.
``list`` shows the entries, without their digests. Exit status: 0 done, 1 the file is
bad or the name is taken, 2 bad arguments.

The entry is appended as text, so the file keeps its comments and layout; the result is
validated like the gateway does at start-up before it replaces the file (atomically).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import ValidationError

from app.auth.keys import TIER_PRIORITY, KeyEntry, KeyFile, KeyFileError, hash_key, load_key_file

KEY_PREFIX = "gw-"


def generate_key() -> str:
    """A new key: 256 random bits, URL-safe, with a prefix secret scanners can match."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def append_entry(path: Path, entry: KeyEntry) -> None:
    """Append ``entry`` to the key file at ``path`` (created if missing).

    Raises :class:`KeyFileError` if the file is invalid, the name or digest is taken, or
    ``keys:`` is not the file's last block (the text append would land elsewhere).
    """
    original = path.read_text(encoding="utf-8") if path.exists() else ""
    # Refuse to build on a file the gateway would refuse.
    existing = load_key_file(path).keys if original.strip() else []
    if any(other.name == entry.name for other in existing):
        raise KeyFileError(f"{path}: a key named '{entry.name}' already exists")
    text = original if original.strip() else "keys:\n"
    text = text if text.endswith("\n") else text + "\n"
    text += _render(entry, _item_indent(text))
    try:
        parsed = KeyFile.model_validate(yaml.safe_load(text))
    except (ValidationError, yaml.YAMLError) as exc:
        raise KeyFileError(f"{path}: cannot add '{entry.name}': {_problem(exc)}") from None
    if not parsed.keys or parsed.keys[-1] != entry:
        raise KeyFileError(f"{path}: 'keys:' must be the last block to append to it")
    _replace(path, text)


def _item_indent(text: str) -> str:
    """The indentation of the existing list items under ``keys:`` (two spaces if none)."""
    found = re.search(r"^keys:[^\n]*\n(?:\s*#[^\n]*\n|\s*\n)*([ \t]*)- ", text, re.MULTILINE)
    return found.group(1) if found else "  "


def _render(entry: KeyEntry, indent: str) -> str:
    item = yaml.safe_dump([entry.model_dump(exclude_none=True)], sort_keys=False)
    return "".join(indent + line for line in item.splitlines(keepends=True))


def _problem(exc: Exception) -> str:
    """One line for a validation or YAML error."""
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(part) for part in err['loc']) or 'file'}: {err['msg']}"
            for err in exc.errors()
        )
    return str(exc).strip().splitlines()[0]


def _replace(path: Path, text: str) -> None:
    # Write beside the target and rename, so the gateway never reads half a file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cmd_new(args: argparse.Namespace) -> int:
    key = generate_key()
    try:
        entry = KeyEntry(
            name=args.name,
            sha256=hash_key(key),
            rpm=args.rpm,
            tpm=args.tpm,
            burst=args.burst,
            concurrency=args.concurrency,
            tier=args.tier,
            models=args.model,
            admin=args.admin,
        )
    except ValidationError as exc:
        print(f"error: {_problem(exc)}", file=sys.stderr)
        return 2
    append_entry(args.file, entry)
    # Only after the entry is safely written: a printed key must always work.
    print(key)
    print(f"added key '{entry.name}' to {args.file}; it is shown only once", file=sys.stderr)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    for entry in load_key_file(args.file).keys:
        limits = f"rpm={entry.rpm or 'default'} tpm={entry.tpm or 'default'}"
        models = ",".join(entry.models) if entry.models is not None else "*"
        admin = " admin" if entry.admin else ""
        print(f"{entry.name}\ttier={entry.tier} {limits} models={models}{admin}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app.auth.cli", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="create a key; print it once; store its hash")
    new.add_argument("--name", required=True)
    new.add_argument("--rpm", type=int, help="requests per minute (default RATE_LIMIT_RPM)")
    new.add_argument("--tpm", type=int, help="tokens per minute (default RATE_LIMIT_TPM)")
    new.add_argument("--burst", type=int, help="request bucket size (default: rpm)")
    new.add_argument("--concurrency", type=int, help="max concurrent requests")
    new.add_argument("--tier", choices=sorted(TIER_PRIORITY), default="standard")
    new.add_argument("--model", action="append", help="a model the key may use (repeat)")
    new.add_argument("--admin", action="store_true", help="may call the admin routes")
    new.set_defaults(run=_cmd_new)
    show = commands.add_parser("list", help="list the keys (names and limits, no digests)")
    show.set_defaults(run=_cmd_list)
    for sub in (new, show):
        sub.add_argument("--file", type=Path, default=_default_file(), required=not _default_file())
    return parser


def _default_file() -> Path | None:
    value = os.environ.get("API_KEYS_FILE", "").strip()
    return Path(value) if value else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; return the exit status (see the module docstring)."""
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
