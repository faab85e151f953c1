"""Tests for the IDX reader/writer, including the real MNIST files in ../shared/data/mnist."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from vprompt.data.idx import read_idx, write_idx


def _shared_data() -> Path:
    env = os.environ.get("VPROMPT_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


MNIST_DIR = _shared_data() / "mnist"
needs_mnist = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"{MNIST_DIR} not available")


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
@pytest.mark.parametrize("shape", [(5, 28, 28), (17,)])
def test_roundtrip_uint8(tmp_path: Path, name: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=shape, dtype=np.uint8)
    path = tmp_path / name
    write_idx(path, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    back = read_idx(path)
    assert back.dtype == np.uint8 and back.shape == shape
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("dtype", ["i1", "<i2", "<i4", "<f4", "<f8"])
def test_roundtrip_other_dtypes(tmp_path: Path, dtype: str) -> None:
    array = (np.arange(24).reshape(2, 3, 4) - 12).astype(dtype)
    write_idx(tmp_path / "x.idx", array)
    back = read_idx(tmp_path / "x.idx")
    assert back.dtype == np.dtype(dtype) and back.flags.writeable
    np.testing.assert_array_equal(back, array)


def test_big_endian_on_disk(tmp_path: Path) -> None:
    write_idx(tmp_path / "x.idx", np.array([1, 256], dtype=np.int16))
    assert (tmp_path / "x.idx").read_bytes() == bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 0, 1, 1, 0])


@pytest.mark.parametrize(
    ("code", "payload", "value"),
    [(0x0C, b"\x00\x00\x01\x02", 258), (0x0D, b"\x3f\xc0\x00\x00", 1.5), (0x0E, b"\xc0\x04" + bytes(6), -2.5)],
)
def test_every_multi_byte_type_is_read_big_endian(tmp_path: Path, code: int, payload: bytes, value: float) -> None:
    (tmp_path / "x.idx").write_bytes(bytes([0, 0, code, 1, 0, 0, 0, 1]) + payload)
    assert read_idx(tmp_path / "x.idx").tolist() == [value]


def test_gzip_detected_by_content_not_name(tmp_path: Path) -> None:
    array = np.arange(10, dtype=np.uint8)
    write_idx(tmp_path / "x.gz", array)
    misnamed = tmp_path / "x-ubyte"
    misnamed.write_bytes((tmp_path / "x.gz").read_bytes())
    np.testing.assert_array_equal(read_idx(misnamed), array)  # (a plain file named .gz: test_digits.py)


@needs_mnist
@pytest.mark.parametrize("split", ["t10k", "train10k"])
def test_real_mnist(split: str) -> None:
    # The reader against the format decoded by hand: a 16-byte header (magic 0x00000803, then N, rows, columns
    # big-endian) and an 8-byte one for labels (magic 0x00000801, N), then the uint8 values.
    for kind, header, shape in (("images-idx3", 16, (10_000, 28, 28)), ("labels-idx1", 8, (10_000,))):
        path = MNIST_DIR / f"{split}-{kind}-ubyte.gz"
        raw = gzip.decompress(path.read_bytes())
        dims = struct.unpack(f">{len(shape)}I", raw[4:header])
        assert raw[:4] == bytes([0, 0, 8, len(shape)]) and dims == shape
        values = read_idx(path)
        assert values.dtype == np.uint8 and values.shape == shape
        assert values.tobytes() == raw[header:]


@pytest.mark.parametrize("name", ["t.idx", "t.idx.gz"])
def test_truncated_file(tmp_path: Path, name: str) -> None:
    write_idx(tmp_path / "full.idx", np.zeros((4, 8, 8), dtype=np.uint8))
    raw = (tmp_path / "full.idx").read_bytes()
    path = tmp_path / name
    if name.endswith(".gz"):
        # A cut gzip stream, as left by an interrupted download.
        path.write_bytes(gzip.compress(raw)[:-10])
    else:
        path.write_bytes(raw[:-5])
    with pytest.raises(ValueError, match="truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "h.idx"
    path.write_bytes(bytes([0, 0, 0x08, 3, 0, 0, 0, 4]))
    with pytest.raises(ValueError, match="truncated IDX header"):
        read_idx(path)


def test_trailing_bytes(tmp_path: Path) -> None:
    path = tmp_path / "t.idx"
    write_idx(path, np.zeros(3, dtype=np.uint8))
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(ValueError, match="size mismatch"):
        read_idx(path)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x00", "bad IDX magic"),
        (b"PK\x03\x04 not an idx file", "bad IDX magic"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x00", "unknown IDX dtype code 0x07"),
        (b"\x00\x00", "not an IDX file"),
    ],
)
def test_bad_magic(tmp_path: Path, payload: bytes, match: str) -> None:
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(payload)
    with pytest.raises(ValueError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_write_rejects_unsupported_dtype(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="int64"):
        write_idx(tmp_path / "x.idx", np.zeros(3, dtype=np.int64))
