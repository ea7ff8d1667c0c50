"""Reading and writing classic pcap files of Ethernet frames, and the few
header fields the proxyd tests look at (IPv4/TCP, no options parsing)."""

from __future__ import annotations

import struct
from pathlib import Path

MAGIC = 0xA1B2C3D4


def read(path: Path) -> list[tuple[float, bytes]]:
    data = Path(path).read_bytes()
    magic, = struct.unpack_from("<I", data, 0)
    endian = "<" if magic == MAGIC else ">"
    assert struct.unpack_from(endian + "I", data, 0)[0] == MAGIC, "not a microsecond pcap"
    linktype, = struct.unpack_from(endian + "I", data, 20)
    assert linktype == 1, f"link type {linktype}"
    frames, offset = [], 24
    while offset + 16 <= len(data):
        seconds, micros, captured, _ = struct.unpack_from(endian + "IIII", data, offset)
        offset += 16
        frames.append((seconds + micros / 1e6, data[offset:offset + captured]))
        offset += captured
    return frames


def write(path: Path, frames: list[tuple[float, bytes]]) -> None:
    out = bytearray(struct.pack("<IHHiIII", MAGIC, 2, 4, 0, 0, 65535, 1))
    for stamp, frame in frames:
        out += struct.pack("<IIII", int(stamp), int(stamp % 1 * 1e6), len(frame), len(frame)) + frame
    Path(path).write_bytes(bytes(out))


class TCP:
    """Fields of an untagged Ethernet/IPv4/TCP frame."""

    def __init__(self, frame: bytes):
        assert frame[12:14] == b"\x08\x00" and frame[23] == 6, "not TCP/IPv4"
        self.ihl = (frame[14] & 0x0F) * 4
        self.total = struct.unpack_from("!H", frame, 16)[0]
        self.tcp = 14 + self.ihl
        self.sport, self.dport, self.seq, self.ack = struct.unpack_from("!HHII", frame, self.tcp)
        self.flags = frame[self.tcp + 13]
        self.data_offset = (frame[self.tcp + 12] >> 4) * 4
        self.payload = frame[self.tcp + self.data_offset:14 + self.total]


def is_tcp(frame: bytes) -> bool:
    return len(frame) >= 54 and frame[12:14] == b"\x08\x00" and frame[23] == 6


def fix_tcp_checksum(frame: bytearray) -> None:
    t = TCP(bytes(frame))
    segment = bytes(frame[t.tcp:14 + t.total])
    pseudo = frame[26:34] + struct.pack("!BBH", 0, 6, len(segment))
    data = pseudo + segment[:16] + b"\0\0" + segment[18:]
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    struct.pack_into("!H", frame, t.tcp + 16, ~total & 0xFFFF)
