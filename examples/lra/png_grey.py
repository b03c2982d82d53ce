"""Read a PNG file as 8-bit grey levels with the standard library (``zlib``), for Pathfinder images.

Supports non-interlaced PNGs of bit depth 8: grey (colour type 0), grey + alpha (4), RGB (2) and
RGBA (6); colour is turned into grey with the ITU-R 601-2 luma weights in PIL's integer form
(what ``Image.convert("L")`` computes), alpha is dropped. Other PNGs are refused with their name.
"""
import struct
import zlib
from typing import List, Tuple

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}


def _paeth(left: int, up: int, up_left: int) -> int:
    estimate = left + up - up_left
    d_left, d_up, d_up_left = abs(estimate - left), abs(estimate - up), abs(estimate - up_left)
    if d_left <= d_up and d_left <= d_up_left:
        return left
    return up if d_up <= d_up_left else up_left


def _unfilter(data: bytes, width: int, height: int, bpp: int, path: str) -> List[bytearray]:
    stride = width * bpp
    rows, previous, offset = [], bytearray(stride), 0
    for _ in range(height):
        kind = data[offset]
        row = bytearray(data[offset + 1:offset + 1 + stride])
        offset += 1 + stride
        if kind not in (0, 1, 2, 3, 4):
            raise ValueError("{}: unknown PNG filter type {}".format(path, kind))
        for i in range(stride if kind else 0):
            left = row[i - bpp] if i >= bpp else 0
            up = previous[i]
            if kind == 1:
                row[i] = (row[i] + left) & 0xFF
            elif kind == 2:
                row[i] = (row[i] + up) & 0xFF
            elif kind == 3:
                row[i] = (row[i] + ((left + up) >> 1)) & 0xFF
            elif kind == 4:
                row[i] = (row[i] + _paeth(left, up, previous[i - bpp] if i >= bpp else 0)) & 0xFF
        rows.append(row)
        previous = row
    return rows


def read_png_grey(path: str) -> Tuple[int, int, List[int]]:
    """``(width, height, pixels)``: the image's grey levels 0..255, row by row."""
    blob = open(path, "rb").read()
    if not blob.startswith(SIGNATURE):
        raise ValueError("{} is not a PNG file".format(path))
    offset, header, compressed = len(SIGNATURE), None, []
    while offset < len(blob):
        length, kind = struct.unpack(">I4s", blob[offset:offset + 8])
        body = blob[offset + 8:offset + 8 + length]
        offset += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            compressed.append(body)
        elif kind == b"IEND":
            break
    if header is None:
        raise ValueError("{}: PNG without IHDR".format(path))
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in CHANNELS or interlace:
        raise ValueError("{}: unsupported PNG (bit depth {}, colour type {}, interlace {}); supported: 8-bit grey, "
                         "grey+alpha, RGB, RGBA, not interlaced".format(path, depth, colour, interlace))
    bpp = CHANNELS[colour]
    rows = _unfilter(zlib.decompress(b"".join(compressed)), width, height, bpp, path)
    pixels = []
    for row in rows:
        if colour in (0, 4):
            pixels.extend(row[::bpp])
        else:
            for i in range(0, len(row), bpp):
                r, g, b = row[i], row[i + 1], row[i + 2]
                pixels.append((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16)
    return width, height, pixels
