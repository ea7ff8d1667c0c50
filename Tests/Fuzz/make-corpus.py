"""Writes the fuzzer's seed corpus (Tests/Fuzz/corpus) from the recorded
captures in Tests/system/captures: real frames for the parser target (0),
a frame stream for the link reader (1), and whole conversations for the
engine (2) and the rewriter (3), in PacketFuzzer.swift's input format
(selector byte, then 2-byte length-prefixed frames).

    python3 Tests/Fuzz/make-corpus.py
"""

from __future__ import annotations

import hashlib
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "system"))

import pcap_frames  # noqa: E402


def main() -> None:
    corpus = HERE / "corpus"
    corpus.mkdir(exist_ok=True)
    captures = HERE.parent / "system" / "captures"
    primary = [f for _, f in pcap_frames.read(captures / "primary.pcap")]
    secondary = [f for _, f in pcap_frames.read(captures / "secondary.pcap")]
    inputs = [bytes([0]) + frame for frame in primary[:8]]
    inputs.append(bytes([1]) + b"".join(struct.pack("<IIII", 0, 0, len(f), len(f)) + f for f in primary[:6]))
    prefixed = lambda frames: b"".join(struct.pack("!H", len(f)) + f for f in frames)
    interleaved = [f for pair in zip(primary, secondary) for f in pair]
    inputs.append(bytes([2]) + prefixed(interleaved))
    inputs.append(bytes([3]) + prefixed(interleaved))
    for data in inputs:
        (corpus / hashlib.sha1(data).hexdigest()).write_bytes(data)
    print(f"{len(inputs)} inputs in {corpus}")


if __name__ == "__main__":
    main()
