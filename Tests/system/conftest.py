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


@pytest.fixture(scope="module")
def swift_runtime_dirs(daemons_dir) -> list[str]:
    """Host directories of Swift runtime libraries the daemons and coloctl
    link to, for binding them into systemd-nspawn containers.

    scripts/setup.sh builds with --static-swift-stdlib and this is empty. A
    build without it (e.g. a debug build) needs the toolchain's runtime
    libraries, which the container lacks; they are bound read-only at the
    same path (DESIGN.md section 10 allows either).
    """
    dirs: set[str] = set()
    for n in (*colo_daemons.DAEMONS, "coloctl"):
        ldd = subprocess.run(["ldd", str(daemons_dir / n)], capture_output=True, text=True).stdout
        if "not found" in ldd:
            pytest.fail(f"{daemons_dir / n} has unresolved libraries:\n{ldd}")
        for line in ldd.splitlines():
            parts = line.split()
            if "=>" in parts and parts[0].startswith("libswift") or "=>" in parts and "/swift/" in line:
                dirs.add(str(Path(parts[parts.index("=>") + 1]).parent))
    return sorted(dirs)


@pytest.fixture
def disk(tmp_path):
    """A blank 1 MiB raw disk image for the test guest (its counter starts at 0)."""
    p = tmp_path / "disk.img"
    with open(p, "wb") as f:
        f.truncate(1 << 20)
    return p
