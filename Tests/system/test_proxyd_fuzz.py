"""The packet parsers, the link's frame-stream reader, the comparison
engine and the rewriter under libFuzzer (Tests/Fuzz/run-fuzzer.sh: swiftc
-sanitize=fuzzer,address), a bounded run from the committed corpus.
$COLO_FUZZ_SECONDS changes the budget (default 60)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[1] / "Fuzz"
runtime = glob.glob(str(Path(shutil.which("swiftc") or "/nonexistent").resolve().parents[1]
                        / "lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a"))
pytestmark = pytest.mark.skipif(not runtime, reason="the Swift toolchain has no libFuzzer runtime")


def test_fuzz_packet_paths_for_a_bounded_time():
    seconds = os.environ.get("COLO_FUZZ_SECONDS", "60")
    result = subprocess.run([str(FUZZ / "run-fuzzer.sh"), seconds], capture_output=True, text=True,
                            timeout=int(seconds) + 900)
    report = result.stderr[-4000:]
    assert result.returncode == 0, f"the fuzzer found a crash (input in Tests/Fuzz/build/findings):\n{report}"
    assert "Done" in result.stderr and "stat::number_of_executed_units" in result.stderr, report
