"""Damaged prepared data, replayed: whatever numpy or zipfile raise on a damaged split, shard or labels
file, loading it is one DataError naming the file and the way out (pipeline/data/errors.py says why
every exception of the read counts). The files are crafted or drawn from a seeded generator.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.errors import DataError
from pipeline.data.format import Dataset, Split, load_split, save_dataset
from tests.conftest import damaged


def _prepared(root: Path, shard_images: int | None) -> Path:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 8, 8, 1), dtype=np.uint8)
    labels = np.arange(40) % 4
    save_dataset(Dataset(Split(images, labels), Split(images[:8], labels[:8]), list("abcd"), "t"), root,
                 shard_images=shard_images)
    return root


def _central_entry(data: bytes, member: str) -> int:
    """Offset of ``member``'s central-directory record (PK\\1\\2: flags at +8, compression method at +10)."""
    at = data.index(b"PK\x01\x02")
    while data[at + 46: at + 46 + len(member)] != member.encode():
        at = data.index(b"PK\x01\x02", at + 4)
    return at


def _broken_header(npy: bytes) -> bytes:
    """The .npy header dict with its shape tuple left open: numpy's tokenizer gives up (TokenError)."""
    end = npy.index(b"), }")
    return npy[:end] + b" , }" + npy[end + 4:]


@pytest.mark.parametrize(("damage", "raised"), [
    ("compression", "NotImplementedError: That compression method is not supported"),
    ("encrypted", "RuntimeError: File 'images.npy' is encrypted"),
], ids=["compression-method", "encryption-flag"])
def test_npz_with_flipped_zip_fields_is_one_data_error(tmp_path, damage, raised):
    root = _prepared(tmp_path / "prep", None)
    path = root / "train.npz"
    data = bytearray(path.read_bytes())
    at = _central_entry(bytes(data), "images.npy")
    if damage == "compression":
        data[at + 10] = 99
    else:
        data[at + 8] |= 1
    path.write_bytes(data)
    with pytest.raises(DataError, match="not a readable npz archive") as info:
        load_split(root, "train")
    assert str(path) in str(info.value) and raised in str(info.value) and "prepare" in str(info.value)


@pytest.mark.parametrize("file", ["train/shard-00001.npy", "train/labels.npy"])
def test_npy_with_a_broken_header_is_one_data_error(tmp_path, file):
    root = _prepared(tmp_path / "prep", 16)
    path = root / file
    path.write_bytes(_broken_header(path.read_bytes()))
    with pytest.raises(DataError, match=r"TokenError") as info:
        load_split(root, "train")
    assert str(path) in str(info.value) and "dvc repro -f prepare" in str(info.value)


@pytest.mark.parametrize("shard_images", [None, 16], ids=["npz", "shards"])
def test_seeded_damaged_prepared_files_load_or_fail_in_one_line(tmp_path, shard_images):
    root = _prepared(tmp_path / "prep", shard_images)
    files = sorted(p for p in (root / "train").glob("*.npy")) if shard_images else [root / "train.npz"]
    originals = {p: p.read_bytes() for p in files}
    rng, failed = random.Random(1130 + (shard_images or 0)), 0
    for i in range(160):
        path = rng.choice(files)
        path.write_bytes(damaged(rng, originals[path], truncate=i % 2 == 1, head=200))
        try:
            split = load_split(root, "train")
            np.asarray(split.images[0:len(split)])  # a memory-mapped shard is read here
        except DataError as exc:
            assert str(root) in str(exc) and "\n" not in str(exc)
            failed += 1
        finally:
            path.write_bytes(originals[path])
    assert failed > 60
