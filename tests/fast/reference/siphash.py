"""Plain-Python SipHash-2-4 (Aumasson & Bernstein, 2012), the reference for gateway/_fast/siphash.pxd."""
from __future__ import annotations

M = (1 << 64) - 1


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & M


def siphash24(data: bytes, k0: int, k1: int) -> int:
    v = [0x736F6D6570736575 ^ k0, 0x646F72616E646F6D ^ k1, 0x6C7967656E657261 ^ k0, 0x7465646279746573 ^ k1]

    def rnd() -> None:
        v[0] = (v[0] + v[1]) & M
        v[1] = _rotl(v[1], 13) ^ v[0]
        v[0] = _rotl(v[0], 32)
        v[2] = (v[2] + v[3]) & M
        v[3] = _rotl(v[3], 16) ^ v[2]
        v[0] = (v[0] + v[3]) & M
        v[3] = _rotl(v[3], 21) ^ v[0]
        v[2] = (v[2] + v[1]) & M
        v[1] = _rotl(v[1], 17) ^ v[2]
        v[2] = _rotl(v[2], 32)

    n = len(data)
    blocks = [int.from_bytes(data[i:i + 8], "little") for i in range(0, n - n % 8, 8)]
    blocks.append(int.from_bytes(data[n - n % 8:], "little") | ((n & 0xFF) << 56))
    for m in blocks:
        v[3] ^= m
        rnd()
        rnd()
        v[0] ^= m
    v[2] ^= 0xFF
    for _ in range(4):
        rnd()
    return v[0] ^ v[1] ^ v[2] ^ v[3]
