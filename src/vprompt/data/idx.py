"""Reader and writer for the IDX format used by MNIST-style datasets, with transparent gzip support.

Layout: two zero bytes, a dtype code byte, a byte with the number of dimensions, one big-endian uint32 per dimension,
then the data in C order, big-endian.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

__all__ = ["IDX_DTYPES", "read_idx", "write_idx"]

#: IDX dtype code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_BY_KIND = {(dt.kind, dt.itemsize): code for code, dt in IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    # Sniff the content rather than trusting the suffix: mirrors serve both compressed and uncompressed files under
    # either name.
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt or truncated gzip data ({exc})") from exc


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads an IDX file (optionally gzip-compressed) into a numpy array.

    Args:
        path: File to read; gzip is detected from the magic bytes, whatever the file name.

    Returns:
        A writable array in native byte order with the shape and dtype stored in the file.

    Raises:
        ValueError: Bad magic number, unknown dtype code, truncated header or data, or trailing bytes.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: not an IDX file (only {len(data)} bytes, the header needs at least 4)")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: bad IDX magic number {data[:4].hex()} (must start with two zero bytes)")
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise ValueError(f"{path}: unknown IDX dtype code 0x{code:02X} (known: {known})")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes, {ndim} dimensions need {header_len})")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header_len
    if got < expected:
        raise ValueError(f"{path}: truncated IDX data (shape {shape} needs {expected} bytes, file has {got})")
    if got > expected:
        raise ValueError(f"{path}: size mismatch, {got - expected} unexpected trailing bytes after shape {shape} data")
    array = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header_len).reshape(shape)
    # astype copies, which both converts to native byte order and detaches the result from the read-only bytes buffer.
    return array.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Writes an array as an IDX file, gzip-compressed when the file name ends with ``.gz``.

    Args:
        path: Destination file.
        array: Array of dtype uint8, int8, int16, int32, float32 or float64, with at most 255 dimensions each smaller
            than 2**32.

    Raises:
        ValueError: Unsupported dtype or shape.
    """
    path = Path(path)
    array = np.asarray(array)
    code = _CODE_BY_KIND.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        raise ValueError(
            f"{path}: IDX cannot store dtype {array.dtype} (supported: uint8, int8, int16, int32, float32, float64)"
        )
    if array.ndim > 255 or any(s >= 2**32 for s in array.shape):
        raise ValueError(f"{path}: IDX cannot store shape {array.shape} (at most 255 dimensions, each < 2**32)")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    if path.name.endswith(".gz"):
        # mtime=0 keeps the output byte-identical across runs, which makes generated fixtures reproducible.
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)
