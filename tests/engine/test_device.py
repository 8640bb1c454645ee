"""The CPU's AMX tile state: asked for by the gateway, inherited by a forked engine core."""

from __future__ import annotations

import asyncio
import ctypes
import os
import platform

import pytest
import torch

from app.engine.device import allow_amx_tiles
from app.engine.manager import SPAWN_WITHOUT_AMX, EngineManager
from tests.conftest import make_settings

SYS_ARCH_PRCTL = 158  # x86-64
ARCH_GET_XCOMP_PERM = 0x1022
XFEATURE_XTILEDATA = 18


AMX = platform.machine() == "x86_64" and torch.cpu._is_amx_tile_supported()
# Why the AMX tests skip elsewhere, and what lifts it: the permission only exists on x86-64
# CPUs with AMX tiles (Sapphire Rapids or newer); they run on any machine where torch
# reports AMX (a Xeon this project ran on did; an AMD EPYC without AMX skips them).
NEEDS_AMX = pytest.mark.skipif(
    not AMX,
    reason="needs an x86-64 CPU with AMX tiles (the AMX permission exists only there); "
    "runs wherever torch.cpu._is_amx_tile_supported() is true",
)


def xcomp_permitted() -> int:
    """The extended CPU state components this process may use (a bit mask)."""
    mask = ctypes.c_uint64()
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(SYS_ARCH_PRCTL, ARCH_GET_XCOMP_PERM, ctypes.byref(mask)) == 0
    return mask.value


@NEEDS_AMX
def test_a_core_forked_after_asking_may_use_amx_tiles() -> None:
    """Without the permission an AMX instruction is SIGILL (vLLM's bf16 attention kernel
    killed the forked engine core on its first request); with it, a forked child has it."""
    assert allow_amx_tiles()
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if it may use the tile data
        os._exit(0 if xcomp_permitted() >> XFEATURE_XTILEDATA & 1 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_the_permission_is_asked_for_only_where_the_cpu_has_amx() -> None:
    """Granted on a CPU with AMX; elsewhere (no AMX, not x86) a no-op that says so."""
    assert allow_amx_tiles() is AMX


@pytest.mark.slow
@NEEDS_AMX
def test_a_spawned_core_that_would_need_amx_is_refused_at_start_up() -> None:
    """exec() clears the permission: a spawned core would die on its first bf16 request,
    so the engine refuses to start, saying why and what to use instead."""
    settings = make_settings().engine
    settings.engine_start_method, settings.dtype = "spawn", "bfloat16"
    with pytest.raises(ValueError, match="ENGINE_START_METHOD=spawn") as refused:
        asyncio.run(EngineManager(settings).start())
    assert str(refused.value) == SPAWN_WITHOUT_AMX
