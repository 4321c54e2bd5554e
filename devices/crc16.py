"""The two CRC-16s the field protocols use, both over polynomial 0xA001 (0x8005 reflected)
with one shared table: SL 651's is CRC-16/MODBUS; HJ 212-2017's (its appendix A) feeds the
register's high byte, not its low one, so it is not MODBUS (tests check both against their
bitwise definitions and published frames)."""

from __future__ import annotations


def _shifted(reg: int) -> int:
    for _ in range(8):
        reg = (reg >> 1) ^ 0xA001 if reg & 1 else reg >> 1
    return reg


# A byte at a time rather than a bit: a splitter may check a few frames' worth of junk per
# read, and the bitwise loop cost 41 µs for a 64-byte frame.
_TABLE = tuple(_shifted(value) for value in range(256))


def modbus(data: bytes) -> int:
    """CRC-16/MODBUS: init 0xFFFF, reflected; SL 651 sends it high byte first."""
    crc = 0xFFFF
    table = _TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def hj212(data: bytes) -> int:
    """HJ 212-2017 appendix A: init 0xFFFF; (reg >> 8) ^ byte < 256 indexes the table."""
    reg = 0xFFFF
    table = _TABLE
    for byte in data:
        reg = table[(reg >> 8) ^ byte]
    return reg
