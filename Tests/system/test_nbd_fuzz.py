"""A bounded libFuzzer run over the NBD request and option parsers
(scripts/fuzz-nbd.sh), from the committed corpus in Tests/Fuzz/nbd-corpus."""

from __future__ import annotations

import glob
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_nbd_parsers_survive_fuzzing():
    swiftc = shutil.which("swiftc")
    if not swiftc:
        pytest.skip("swiftc is not on PATH")
    toolchain = Path(swiftc).resolve().parents[1]
    if not glob.glob(str(toolchain / "lib" / "clang" / "*" / "lib" / "linux" / "libclang_rt.fuzzer-*.a")):
        pytest.skip(f"the Swift toolchain at {toolchain} has no libFuzzer runtime")
    run = subprocess.run([str(REPO / "scripts" / "fuzz-nbd.sh"), "15"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Done" in run.stderr and "runs in" in run.stderr, run.stderr[-2000:]
