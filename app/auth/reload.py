"""Reload ``API_KEYS_FILE`` when it changes, so keys rotate without a restart.

Polling ``stat`` (every ``API_KEYS_RELOAD_S``) rather than inotify: a Kubernetes Secret
volume changes a file by swapping a symlink, which a watch on the file never sees, and a
poll costs one system call. A bad new file is logged and the keys in use stay.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from app.auth.keys import KeyFileError, KeyStore

log = logging.getLogger(__name__)


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)  # follows the symlink: a swapped target is a new inode
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


class KeyFileWatcher:
    """Reloads ``store`` whenever ``path`` changes; :meth:`run` until cancelled."""

    def __init__(self, store: KeyStore, path: Path, interval_s: float) -> None:
        self.store, self.path, self.interval_s = store, path, interval_s
        self._seen = _signature(path)
        self.reloads = 0

    def check(self) -> bool:
        """Reload if the file changed since last seen; True when new keys took effect."""
        current = _signature(self.path)
        if current is None or current == self._seen:
            return False
        self._seen = current
        try:
            count = self.store.reload()
        except KeyFileError as exc:
            log.error("API_KEYS_FILE changed but is invalid; keeping the keys in use: %s", exc)
            return False
        self.reloads += 1
        log.warning("API_KEYS_FILE reloaded", extra={"keys": count})
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.check()
