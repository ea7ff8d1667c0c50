"""A bounded libFuzzer run over the test guest's HTTP request parser
(guest/src/http_request.c, built for the host by scripts/fuzz-guest-http.sh),
from the committed corpus in Tests/Fuzz/guest-http-corpus."""

from __future__ import annotations

import glob
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_guest_http_parser_survives_fuzzing():
    swiftc = shutil.which("swiftc")
    if not swiftc:
        pytest.skip("swiftc is not on PATH (its toolchain's clang builds the fuzzer)")
    toolchain = Path(swiftc).resolve().parents[1]
    if not glob.glob(str(toolchain / "lib" / "clang" / "*" / "lib" / "linux" / "libclang_rt.fuzzer-*.a")):
        pytest.skip(f"the Swift toolchain at {toolchain} has no libFuzzer runtime")
    run = subprocess.run([str(REPO / "scripts" / "fuzz-guest-http.sh"), "15"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Done" in run.stderr and "runs in" in run.stderr, run.stderr[-2000:]
