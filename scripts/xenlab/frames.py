#!/usr/bin/env python3
"""Writes the frames the dom0 <-> domU straw checks send (scripts/xenlab/straw-dom0.sh), as
`pore straw --framed` reads them: a 4-byte little-endian length, then the bytes. Sizes around
the LING ring (16376 bytes, one byte kept free), a v2 ring of 16 pages, 64 KiB, 1 MiB; empty
frames first, between and last. Usage: frames.py OUT"""
import random
import struct
import sys

rng = random.Random(12)
sizes = [0, 1, 100, 0, 4095, 4096, 4097, 16375, 16376, 16377, 65536, 70000, 1 << 20, 0]
with open(sys.argv[1], "wb") as f:
    for n in sizes:
        f.write(struct.pack("<I", n))
        f.write(rng.randbytes(n))
