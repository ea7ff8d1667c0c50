"""Fixtures shared by the system tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import colo_daemons

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def daemons_dir() -> Path:
    """Directory holding the built daemons and coloctl (see colo_daemons)."""
    return colo_daemons.build_dir()


@pytest.fixture(scope="module")
def cclient() -> Path:
    """Tests/cclient/build/colo-status, built now (make is incremental)."""
    subprocess.run(["make", "-s", "-C", str(REPO / "Tests" / "cclient")], check=True)
    return REPO / "Tests" / "cclient" / "build" / "colo-status"


@pytest.fixture
def disk(tmp_path):
    """A blank 1 MiB raw disk image for the test guest (its counter starts at 0)."""
    p = tmp_path / "disk.img"
    with open(p, "wb") as f:
        f.truncate(1 << 20)
    return p
