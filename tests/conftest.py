"""Shared helpers: build scripted scenarios the way a race test reads."""

from __future__ import annotations

import os

import attrs
import pytest
from hypothesis import settings

from pmlsim import SimConfig
from pmlsim.testing import (  # the helpers users get, shared with our own tests
    COLLECTOR,
    KIB4,
    MIB2,
    US_PER_PAGE_MBIT,
    logged,
    migrating,
    run,
    scripted,
)

# CI runs the same hypothesis examples every time (a failure there is reproducible);
# local runs explore new ones.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

__all__ = ["COLLECTOR", "KIB4", "MIB2", "US_PER_PAGE_MBIT", "logged", "migrating", "run", "scripted"]


@pytest.fixture(params=["fast", "reference"])
def engine(request) -> str:
    """Semantics tests run on both engines."""
    return request.param


def with_engine(config: SimConfig, engine: str) -> SimConfig:
    return attrs.evolve(config, engine=engine)
