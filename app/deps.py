"""Typed dependency aliases for the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.config import Settings
from app.services.generation import GenerationService


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_generation(request: Request) -> GenerationService:
    return request.app.state.generation  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings)]
GenerationDep = Annotated[GenerationService, Depends(get_generation)]
