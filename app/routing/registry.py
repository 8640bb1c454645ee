"""``ModelRegistry``: where the catalogue comes from, and swapping a new one in.

Sources, best first: the remote registry (``registry.url``, polled every ``poll_s``), its
last good copy on disk (``registry.cache``, written after every good fetch), and the
static ``MODELS_FILE`` (or, without one, today's single local model). A document that does
not validate is never swapped in, so the catalogue is never empty. ``MODELS_FILE`` is
re-read when it changes (checked every ``MODELS_RELOAD_S``) and on SIGHUP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client import CollectorRegistry

from app.deployments.local import LocalDeployment
from app.routing.catalog import Catalog, CatalogError, RegistrySpec, load_catalog, parse_catalog
from app.routing.pool import DeploymentPool

log = logging.getLogger(__name__)


class ModelRegistry:
    """Holds the current :class:`Router`; see the module docstring."""

    def __init__(
        self,
        pool: DeploymentPool,
        static: Callable[[], Catalog],
        path: Path | None = None,
        reload_s: float = 5.0,
    ) -> None:
        self.pool, self._static, self.path, self.reload_s = pool, static, path, reload_s
        catalog = static()
        self.source = str(path) if path else "default"
        self.router, self._pending, _ = pool.build(catalog)
        self._file_seen = _signature(path)
        self._wake = asyncio.Event()
        self.reloads = 0
        self.last_error: str | None = None

    def engine_registries(self) -> list[tuple[str, CollectorRegistry]]:
        """Each live local deployment's ``vllm:*`` registry, by deployment name (/metrics)."""
        return [
            (deployment.state.name, registry)
            for deployment in self.router.deployments()
            if isinstance(deployment, LocalDeployment)
            and (registry := deployment.stat_registry) is not None
        ]

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, on_fatal: Any = None) -> None:
        """Start the first catalogue's deployments; take the remote registry's if it answers."""
        self.pool.start(self._pending, on_fatal)
        self._pending = []
        spec = self.router.catalog.registry
        if spec is not None:
            remote = await self._fetch(spec) or _read_cache(spec.cache)
            if remote is not None:
                self.apply(remote, "registry")

    async def run(self) -> None:
        """Poll the registry and the file until cancelled; SIGHUP wakes it at once."""
        while True:
            interval = self._interval()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            await self.refresh()

    def request_reload(self) -> None:
        """SIGHUP: re-read the file (and the registry) now."""
        self._file_seen = None
        self._wake.set()

    async def refresh(self) -> None:
        spec = self.router.catalog.registry
        if spec is not None:
            fetched = await self._fetch(spec)
            if fetched is not None:
                self.apply(fetched, "registry")
                return
        current = _signature(self.path)
        if self.path is not None and current != self._file_seen:
            self._file_seen = current
            try:
                self.apply(self._static(), str(self.path))
            except CatalogError as exc:
                self._refuse(str(exc))

    def apply(self, catalog: Catalog, source: str) -> None:
        """Swap ``catalog`` in (unchanged deployments carry on; see the pool)."""
        if catalog == self.router.catalog:
            return
        try:
            router, added, retired = self.pool.build(catalog)
        except CatalogError as exc:  # e.g. an unknown tool_call_parser
            self._refuse(str(exc))
            return
        self.router, self.source = router, source
        self.pool.start(added)
        self.pool.retire(retired)
        self.reloads += 1
        names = {"added": added, "retired": retired}
        extra: dict[str, Any] = {key: [d.state.name for d in group] for key, group in names.items()}
        extra |= {"source": source, "models": [m.id for m in catalog.models]}
        log.warning("model catalogue reloaded", extra=extra)

    def _refuse(self, reason: str) -> None:
        self.last_error = reason
        log.error("model catalogue refused; keeping the one in use: %s", reason)

    def _interval(self) -> float:
        spec = self.router.catalog.registry
        return min(spec.poll_s, self.reload_s) if spec is not None else self.reload_s

    async def _fetch(self, spec: RegistrySpec) -> Catalog | None:
        """The registry's catalogue (cached to disk), or None if it is down or invalid."""
        try:
            async with httpx.AsyncClient(timeout=spec.timeout_s) as client:
                response = await client.get(spec.url)
            response.raise_for_status()
            data = yaml.safe_load(response.text)
            catalog = parse_catalog(_keep_registry(data, spec), f"registry {spec.url}")
        except (httpx.HTTPError, yaml.YAMLError, CatalogError) as exc:
            self._refuse(f"registry {spec.url}: {exc}")
            return None
        _write_cache(spec.cache, catalog)
        self.last_error = None
        return catalog

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "reloads": self.reloads,
            "last_error": self.last_error,
            "models": [m.id for m in self.router.catalog.models],
        }


def _keep_registry(data: Any, spec: RegistrySpec) -> Any:
    """A registry's document keeps pointing at the registry (it need not repeat itself)."""
    if isinstance(data, dict) and "registry" not in data:
        return {**data, "registry": spec.model_dump(mode="json")}
    return data


def _signature(path: Path | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _write_cache(path: Path, catalog: Catalog) -> None:
    """The last good catalogue, written atomically beside its final name."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(catalog.model_dump(mode="json"), handle)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write the registry cache %s: %s", path, exc)


def _read_cache(path: Path) -> Catalog | None:
    try:
        return parse_catalog(json.loads(path.read_text(encoding="utf-8")), f"cache {path}")
    except (OSError, ValueError, CatalogError):
        return None


def static_catalog(path: Path | None, default: Callable[[], Catalog]) -> Callable[[], Catalog]:
    """The file's catalogue when there is a file, else the default."""
    return (lambda: load_catalog(path)) if path is not None else default
