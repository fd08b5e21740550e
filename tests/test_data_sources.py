"""The prepare stage's sources: digits, official-format CIFAR archives, image folders, and their errors."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import random
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from pipeline.config import PrepareConfig
from pipeline.data.format import manifest_for
from pipeline.data.preprocess import InputSpec, fit_image
from pipeline.data.sources import DataError, load_source
from pipeline.data.splits import class_test_count, stratified_split
from tests.conftest import damaged

REPO = Path(__file__).resolve().parents[1]
PY = REPO / ".venv" / "bin" / "python"
if not PY.exists():  # e.g. CI with the project installed into the running interpreter
    PY = Path(sys.executable)


# ---------------------------------------------------------------- split


def test_stratified_split_counts_are_per_class_and_fixed_by_seed():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 3 + [3] * 1)
    train, test = stratified_split(labels, 0.2, seed=7)
    # round-half-up of n * 0.2 -> 2, 1, 0.6 -> 1; at least one when a class has >= 2; a singleton stays in train
    assert [int((labels[test] == c).sum()) for c in range(4)] == [2, 1, 1, 0]
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
    again = stratified_split(labels, 0.2, seed=7)
    assert np.array_equal(again[1], test)
    others = {tuple(stratified_split(labels, 0.2, seed=s)[1]) for s in range(8)}
    assert len(others) > 1
    assert [class_test_count(n, 0.5) for n in (1, 2, 3, 4, 7)] == [0, 1, 2, 2, 4]
    assert class_test_count(10, 0.99) == 9  # never every image of a class


# ---------------------------------------------------------------- digits


def test_digits_shape_dtype_range_and_exact_pixels():
    ds = load_source(PrepareConfig(source="digits", test_fraction=0.2), seed=0)
    assert ds.source == "digits" and ds.classes == [str(i) for i in range(10)]
    assert ds.train.images.dtype == np.uint8 and ds.train.images.shape[1:] == (8, 8, 1)
    assert len(ds.train) + len(ds.test) == 1797
    bunch = load_digits()
    train_idx, test_idx = stratified_split(bunch.target, 0.2, 0)
    # round(v * 255 / 16) by hand for the 17 possible values; 8 -> 127.5 rounds up to 128
    table = np.array([0, 16, 32, 48, 64, 80, 96, 112, 128, 143, 159, 175, 191, 207, 223, 239, 255], np.uint8)
    expected = table[bunch.images.astype(int)][..., None]
    assert np.array_equal(ds.train.images, expected[train_idx])
    assert np.array_equal(ds.test.images, expected[test_idx])
    assert np.array_equal(ds.test.labels, bunch.target[test_idx])
    assert ds.train.images.min() == 0 and ds.train.images.max() == 255


def test_digits_split_is_stratified_and_deterministic():
    cfg = PrepareConfig(source="digits", test_fraction=0.25)
    a, b, c = load_source(cfg, 3), load_source(cfg, 3), load_source(cfg, 4)
    assert manifest_for(a)["dataset_sha256"] == manifest_for(b)["dataset_sha256"]
    assert manifest_for(a)["dataset_sha256"] != manifest_for(c)["dataset_sha256"]
    per_class = np.bincount(load_digits().target)
    assert np.array_equal(np.bincount(a.test.labels), [class_test_count(n, 0.25) for n in per_class])
    assert np.array_equal(np.bincount(a.train.labels) + np.bincount(a.test.labels), per_class)


# ---------------------------------------------------------------- CIFAR archives


def _images_to_rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> official rows: the R plane, then G, then B, each row-major."""
    rows = np.empty((len(images), 3072), np.uint8)
    for n in range(len(images)):
        for ch in range(3):
            for r in range(32):
                rows[n, ch * 1024 + r * 32 : ch * 1024 + r * 32 + 32] = images[n, r, :, ch]
    return rows


def _write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def _cifar_images(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _as_numpy1(payload: bytes) -> bytes:
    """Name numpy's reconstructor as numpy 1.x did, like the official CIFAR pickles do."""
    old = b"cnumpy._core.multiarray\n_reconstruct\n"
    assert old in payload
    return payload.replace(old, b"cnumpy.core.multiarray\n_reconstruct\n")


def _cifar10_members(per_batch: int = 3, drop: str | None = None, patch: dict | None = None,
                     reverse: bool = True) -> tuple[dict[str, bytes], list[np.ndarray], list[list[int]]]:
    """Tiny CIFAR-10 members; images[k], labels[k] for batches 1..5 then the test batch."""
    names = [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)] + ["cifar-10-batches-py/test_batch"]
    images = [_cifar_images(k, per_batch) for k in range(len(names))]
    labels = [[(k + j) % 10 for j in range(per_batch)] for k in range(len(names))]
    members = {}
    for name, imgs, labs in zip(names, images, labels, strict=True):
        d = {b"batch_label": b"x", b"labels": labs, b"data": _images_to_rows(imgs), b"filenames": [b"f"] * per_batch}
        d.update((patch or {}).get(name, {}))
        members[name] = _as_numpy1(pickle.dumps(d, protocol=2))
    members["cifar-10-batches-py/batches.meta"] = pickle.dumps(
        {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_vis": 3072}, protocol=2)
    if drop:
        members.pop(drop)
    if reverse:  # the reader must not rely on archive order
        members = dict(reversed(members.items()))
    return members, images, labels


def test_cifar10_round_trips_pixels_and_planes_exactly(tmp_path):
    members, images, labels = _cifar10_members()
    # a known pixel: image 1 of batch 2 at row 3, column 5 gets R=200, G=100, B=50 in the official layout
    d = pickle.loads(members["cifar-10-batches-py/data_batch_2"], encoding="bytes")
    d[b"data"][1, [0 * 1024 + 3 * 32 + 5, 1 * 1024 + 3 * 32 + 5, 2 * 1024 + 3 * 32 + 5]] = [200, 100, 50]
    members["cifar-10-batches-py/data_batch_2"] = pickle.dumps(d, protocol=2)
    images[1][1, 3, 5] = [200, 100, 50]
    archive = _write_tar(tmp_path / "cifar-10-python.tar.gz", members)

    for path in (archive, tmp_path):  # the archive itself, or the folder holding it
        ds = load_source(PrepareConfig(source="cifar10", path=str(path)), seed=0)
        assert ds.source == "cifar10" and ds.classes == [f"class{i}" for i in range(10)]
        assert ds.train.images.shape == (15, 32, 32, 3) and ds.test.images.shape == (3, 32, 32, 3)
        assert np.array_equal(ds.train.images, np.concatenate(images[:5]))  # batches 1..5 in order
        assert np.array_equal(ds.test.images, images[5])
        assert list(ds.train.labels) == sum(labels[:5], []) and list(ds.test.labels) == labels[5]
        assert ds.train.images[3 + 1, 3, 5].tolist() == [200, 100, 50]
        assert ds.train.images.flags.c_contiguous


def test_cifar100_round_trips_fine_labels(tmp_path):
    train, test = _cifar_images(10, 4), _cifar_images(11, 2)
    train[2, 31, 0] = [1, 2, 3]
    fine_names = [f"fine{i:02d}".encode() for i in range(100)]
    members = {
        "cifar-100-python/meta": pickle.dumps({b"fine_label_names": fine_names,
                                               b"coarse_label_names": [b"c"] * 20}, protocol=2),
        "cifar-100-python/train": pickle.dumps({b"data": _images_to_rows(train), b"fine_labels": [99, 0, 5, 42],
                                                b"coarse_labels": [1, 2, 3, 4]}, protocol=2),
        "cifar-100-python/test": pickle.dumps({b"data": _images_to_rows(test), b"fine_labels": [7, 8],
                                               b"coarse_labels": [0, 0]}),  # protocol 5 pickles work too
    }
    _write_tar(tmp_path / "cifar-100-python.tar.gz", members)
    ds = load_source(PrepareConfig(source="cifar100", path=str(tmp_path)), seed=0)
    assert ds.classes == [n.decode() for n in fine_names]
    assert np.array_equal(ds.train.images, train) and np.array_equal(ds.test.images, test)
    assert ds.train.labels.tolist() == [99, 0, 5, 42] and ds.test.labels.tolist() == [7, 8]
    assert ds.train.images[2, 31, 0].tolist() == [1, 2, 3]
    assert ds.extra == {"archive": "cifar-100-python.tar.gz", "split": "official"}


def test_cifar_download_goes_through_torchvision_when_asked(tmp_path, monkeypatch):
    import torchvision.datasets

    members, images, _ = _cifar10_members(per_batch=1)
    calls = []

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            calls.append((root, download))
            _write_tar(Path(root) / "cifar-10-python.tar.gz", members)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    folder = tmp_path / "raw"
    ds = load_source(PrepareConfig(source="cifar10", path=str(folder), download=True), seed=0)
    assert calls == [(str(folder), True)]
    assert np.array_equal(ds.test.images, images[5])
    load_source(PrepareConfig(source="cifar10", path=str(folder), download=True), seed=0)
    assert len(calls) == 1  # present now: no second download


def _cifar_error(tmp_path: Path, payload: bytes | dict[str, bytes]) -> str:
    archive = tmp_path / "cifar-10-python.tar.gz"
    if isinstance(payload, dict):
        _write_tar(archive, payload)
    else:
        archive.write_bytes(payload)
    with pytest.raises(DataError) as err:
        load_source(PrepareConfig(source="cifar10", path=str(archive)), seed=0)
    msg = str(err.value)
    assert str(archive) in msg and "\n" not in msg
    return msg


def test_cifar_missing_archive_says_how_to_fix(tmp_path):
    with pytest.raises(DataError) as err:
        load_source(PrepareConfig(source="cifar10", path=str(tmp_path)), seed=0)
    msg = str(err.value)
    assert str(tmp_path / "cifar-10-python.tar.gz") in msg and "prepare.download" in msg and "prepare.path" in msg
    with pytest.raises(DataError, match=r"nowhere/x\.tar\.gz: cifar100 archive not found"):
        load_source(PrepareConfig(source="cifar100", path=str(tmp_path / "nowhere" / "x.tar.gz")), seed=0)


def test_cifar_not_a_tar_and_truncated_archives(tmp_path):
    assert "not a readable tar.gz" in _cifar_error(tmp_path, b"this is not an archive at all")
    assert "not a readable tar.gz" in _cifar_error(tmp_path, gzip.compress(b"gzip, but no tar inside" * 50))
    good = tmp_path / "good.tar.gz"
    _write_tar(good, _cifar10_members(per_batch=50)[0])
    msg = _cifar_error(tmp_path, good.read_bytes()[: good.stat().st_size // 2])
    assert "truncated" in msg


def test_cifar_missing_member(tmp_path):
    members, _, _ = _cifar10_members(drop="cifar-10-batches-py/data_batch_3")
    assert "member cifar-10-batches-py/data_batch_3 is missing" in _cifar_error(tmp_path, members)
    members, _, _ = _cifar10_members(drop="cifar-10-batches-py/batches.meta")
    assert "member cifar-10-batches-py/batches.meta is missing" in _cifar_error(tmp_path, members)


@pytest.mark.parametrize(("patch", "expected"), [
    ({b"labels": None}, "b'labels' must be 3 integers"),
    ({b"data": np.zeros((3, 3000), np.uint8)}, "b'data' must be uint8 of shape (N, 3072), got uint8 (3, 3000)"),
    ({b"data": np.zeros((3, 3072), np.float32)}, "got float32"),
    ({b"labels": [0, 1]}, "b'labels' must be 3 integers"),
    ({b"labels": [0, 1, 10]}, "outside 0..9"),
])
def test_cifar_batch_with_wrong_content(tmp_path, patch, expected):
    members, _, _ = _cifar10_members(patch={"cifar-10-batches-py/data_batch_4": patch})
    msg = _cifar_error(tmp_path, members)
    assert "cifar-10-batches-py/data_batch_4" in msg and expected in msg


def test_cifar_batch_missing_key_and_foreign_pickles(tmp_path):
    members, _, _ = _cifar10_members()
    d = pickle.loads(members["cifar-10-batches-py/test_batch"], encoding="bytes")
    del d[b"labels"]
    members["cifar-10-batches-py/test_batch"] = pickle.dumps(d)
    msg = _cifar_error(tmp_path, members)
    assert "cifar-10-batches-py/test_batch: key b'labels' is missing" in msg

    members, _, _ = _cifar10_members()
    members["cifar-10-batches-py/data_batch_1"] = b"\x80\x02garbage"
    assert "data_batch_1: not a valid CIFAR pickle" in _cifar_error(tmp_path, members)

    class Hostile:  # a pickle that would run a command when loaded with plain pickle.load
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    members["cifar-10-batches-py/data_batch_1"] = pickle.dumps({b"data": Hostile()})
    msg = _cifar_error(tmp_path, members)
    assert "data_batch_1: not a valid CIFAR pickle" in msg and "system" in msg

    members, _, _ = _cifar10_members()
    members["cifar-10-batches-py/batches.meta"] = pickle.dumps({b"names": []})
    assert "batches.meta: key b'label_names' must be" in _cifar_error(tmp_path, members)


# Damaged members whose unpickling raised what the CIFAR reader once let through as a traceback.
@pytest.mark.parametrize(("member", "payload", "expected"), [
    ("data_batch_2", b"\x80\x04\x8d" + b"\xff" * 8, "not a valid CIFAR pickle (OverflowError: BINUNICODE exceeds"),
    ("data_batch_2", b"\x80\x04\x8e" + (2**40).to_bytes(8, "little"), "not a valid CIFAR pickle (MemoryError"),
    ("batches.meta", b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x06\x00\x00\x00Ratin1\x86R.",
     "not a valid CIFAR pickle (LookupError: unknown encoding: Ratin1)"),
    ("batches.meta", pickle.dumps({b"label_names": [b"cat", b"d\xffg"]}, protocol=2),
     "key b'label_names' holds a class name that is not UTF-8"),
], ids=["unicode8-past-2^63", "bytes8-of-a-terabyte", "mangled-encoding", "non-utf8-class-name"])
def test_cifar_damaged_member_is_one_line(tmp_path, member, payload, expected):
    members, _, _ = _cifar10_members(per_batch=1)
    members[f"cifar-10-batches-py/{member}"] = payload
    msg = _cifar_error(tmp_path, members)
    assert f"cifar-10-batches-py/{member}: " in msg and expected in msg, msg


def test_cifar_seeded_damaged_archives_load_or_fail_in_one_line(tmp_path):
    members, _, _ = _cifar10_members(per_batch=2)
    rng, failed = random.Random(1130), 0
    for i in range(150):  # one member truncated or bit-flipped, by turns
        name = rng.choice(sorted(members))
        archive = _write_tar(tmp_path / "cifar-10-python.tar.gz",
                             {**members, name: damaged(rng, members[name], truncate=i % 2 == 1)})
        try:
            ds = load_source(PrepareConfig(source="cifar10", path=str(archive)), seed=0)
        except DataError as exc:
            assert str(archive) in str(exc) and "\n" not in str(exc)
            failed += 1
        else:
            assert ds.train.images.shape == (10, 32, 32, 3)
    assert failed > 120


# ---------------------------------------------------------------- image folders


def _save(path: Path, array: np.ndarray, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)
    return path


def _solid(h: int, w: int, value) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, np.uint8), (h, w, 3) if np.ndim(value) else (h, w)).copy()


def test_folder_colour_png_round_trips_exactly(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {("cat", i): rng.integers(0, 256, (6, 5, 3), dtype=np.uint8) for i in range(4)}
    arrays |= {("dog", i): rng.integers(0, 256, (6, 5, 3), dtype=np.uint8) for i in range(6)}
    for (cls, i), a in arrays.items():
        _save(tmp_path / cls / f"{i}.png", a)
    _save(tmp_path / "dog" / "sub" / "deep.png", arrays[("dog", 0)])  # nested files belong to the class
    (tmp_path / "dog" / "notes.txt").write_text("not an image: skipped")
    (tmp_path / ".cache").mkdir()  # hidden folders are not classes

    ds = load_source(PrepareConfig(source="folder", path=str(tmp_path), test_fraction=0.25), seed=1)
    assert ds.classes == ["cat", "dog"] and ds.source == "folder"
    assert ds.train.images.shape[1:] == (6, 5, 3)  # same-size non-square images keep their size
    # 4 cats -> 1 test; 7 dogs -> round(1.75) = 2 test
    assert np.bincount(ds.test.labels).tolist() == [1, 2] and np.bincount(ds.train.labels).tolist() == [3, 5]
    assert ds.extra["skipped_files"] == 1 and ds.extra["split"] == "stratified"
    # the files in sorted order are cat/0..3, dog/0..5, dog/sub/deep; the split picks from that order
    ordered = [arrays[("cat", i)] for i in range(4)] + [arrays[("dog", i)] for i in range(6)] + [arrays[("dog", 0)]]
    labels = np.array([0] * 4 + [1] * 7)
    train_idx, test_idx = stratified_split(labels, 0.25, 1)
    assert np.array_equal(ds.train.images, np.stack([ordered[i] for i in train_idx]))
    assert np.array_equal(ds.test.images, np.stack([ordered[i] for i in test_idx]))


def test_folder_all_grey_gives_one_channel_and_16_bit_is_scaled(tmp_path):
    _save(tmp_path / "a" / "0.png", _solid(4, 4, 10))
    _save(tmp_path / "a" / "1.png", _solid(4, 4, 20))
    _save(tmp_path / "b" / "0.png", _solid(4, 4, 30))
    Image.fromarray(np.full((4, 4), 257 * 200, np.uint16)).save(tmp_path / "b" / "1.png")  # 16-bit grey
    ds = load_source(PrepareConfig(source="folder", path=str(tmp_path), test_fraction=0.5), seed=0)
    assert ds.train.images.shape == (2, 4, 4, 1)
    values = sorted(int(x) for x in np.concatenate([ds.train.images, ds.test.images])[:, 0, 0, 0])
    assert values == [10, 20, 30, 200]


def test_folder_mixed_sizes_need_image_size_and_resize_with_fit_image(tmp_path):
    grey = _save(tmp_path / "x" / "grey.png", _solid(10, 10, 77))
    colour = _save(tmp_path / "x" / "colour.png", _solid(16, 12, [10, 20, 30]))
    rng = np.random.default_rng(3)
    textured = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    textured_path = _save(tmp_path / "y" / "textured.png", textured)
    photo = _save(tmp_path / "y" / "photo.jpg", _solid(8, 8, [200, 0, 0]), fmt="JPEG")

    with pytest.raises(DataError) as err:
        load_source(PrepareConfig(source="folder", path=str(tmp_path)), seed=0)
    msg = str(err.value)
    assert "prepare.image_size" in msg and sum(str(p) in msg for p in (grey, colour, textured_path, photo)) == 2

    ds = load_source(PrepareConfig(source="folder", path=str(tmp_path), image_size=8, test_fraction=0.5), seed=0)
    everything = np.concatenate([ds.train.images, ds.test.images])
    assert everything.shape == (4, 8, 8, 3)  # one colour image makes all RGB
    pixels = {tuple(int(v) for v in img[4, 4]) for img in everything}
    assert (10, 20, 30) in pixels  # a solid image stays solid through the resize
    assert (77, 77, 77) in pixels  # grey repeated into three channels
    spec = InputSpec(8, 3, (0.0,) * 3, (1.0,) * 3)
    assert any(np.array_equal(img, fit_image(textured, spec)) for img in everything)
    red = [img for img in everything if img[4, 4, 0] > 150][0]
    assert np.abs(red.astype(int) - [200, 0, 0]).max() <= 8  # JPEG is lossy, but close


def test_folder_official_train_test_layout(tmp_path):
    for split, n in (("train", 3), ("test", 1)):
        for cls in ("b", "a"):
            for i in range(n):
                _save(tmp_path / split / cls / f"{i}.png", _solid(3, 3, [ord(cls), i, 1 if split == "test" else 0]))
    ds = load_source(PrepareConfig(source="folder", path=str(tmp_path)), seed=0)
    assert ds.classes == ["a", "b"] and ds.extra["split"] == "official"
    assert len(ds.train) == 6 and len(ds.test) == 2
    assert ds.test.images[:, 0, 0, 2].tolist() == [1, 1] and ds.train.images[:, 0, 0, 2].tolist() == [0] * 6
    assert ds.test.labels.tolist() == [0, 1] and ds.test.images[:, 0, 0, 0].tolist() == [ord("a"), ord("b")]

    (tmp_path / "val").mkdir()
    with pytest.raises(DataError, match=r"holds train/ and test/ beside other folders \(test, train, val\)"):
        load_source(PrepareConfig(source="folder", path=str(tmp_path)), seed=0)
    (tmp_path / "val").rmdir()
    _save(tmp_path / "test" / "zebra" / "0.png", _solid(3, 3, [1, 2, 3]))
    with pytest.raises(DataError, match=r"zebra: class 'zebra' is not among the training classes"):
        load_source(PrepareConfig(source="folder", path=str(tmp_path)), seed=0)


def test_folder_progress_bar(tmp_path, capsys):
    for i in range(4):
        _save(tmp_path / ("a" if i % 2 else "b") / f"{i}.png", _solid(2, 2, i))
    load_source(PrepareConfig(source="folder", path=str(tmp_path), test_fraction=0.5), seed=0, progress=True)
    assert "read train images" in capsys.readouterr().err


def _folder_error(path: Path, **kw) -> str:
    with pytest.raises(DataError) as err:
        load_source(PrepareConfig(source="folder", path=str(path), **kw), seed=0)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_folder_errors_name_the_file(tmp_path):
    assert _folder_error(tmp_path / "missing") == f"{tmp_path / 'missing'}: image folder does not exist"
    (tmp_path / "file.png").write_bytes(b"x")
    assert "not a folder" in _folder_error(tmp_path / "file.png")

    empty_root = tmp_path / "empty"
    empty_root.mkdir()
    (empty_root / "loose.png").write_bytes(b"x")
    assert f"{empty_root}: no class sub-folders" in _folder_error(empty_root)

    root = tmp_path / "data"
    _save(root / "a" / "0.png", _solid(4, 4, [1, 2, 3]))
    _save(root / "a" / "1.png", _solid(4, 4, [1, 2, 3]))
    (root / "b").mkdir()
    (root / "b" / "readme.txt").write_text("no images here")
    assert f"{root / 'b'}: class folder holds no image files" in _folder_error(root)

    _save(root / "b" / "0.png", _solid(4, 4, [1, 2, 3]))
    _save(root / "b" / "1.png", _solid(4, 4, [1, 2, 3]))
    bad = root / "b" / "broken.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    assert f"{bad}: not a readable image" in _folder_error(root)

    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good, "PNG")
    bad.unlink()
    truncated = root / "b" / "truncated.png"
    truncated.write_bytes(good.getvalue()[:300])  # a valid header, then the data stops
    assert f"{truncated}: corrupt or unreadable image" in _folder_error(root, image_size=4)
    truncated.unlink()

    assert "prepare.image_size must be a positive" in _folder_error(root, image_size=0)
    single = tmp_path / "single"
    _save(single / "a" / "0.png", _solid(2, 2, 1))
    _save(single / "b" / "0.png", _solid(2, 2, 1))
    assert "too few images to hold out a test set" in _folder_error(single)
    with pytest.raises(DataError, match="prepare.path: not set"):
        load_source(PrepareConfig(source="folder"), seed=0)


# ---------------------------------------------------------------- the stage


def _run_stage(cwd: Path, params: dict) -> subprocess.CompletedProcess:
    (cwd / "params.yaml").write_text(json.dumps(params))  # JSON is YAML
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([str(PY), str(REPO / "stages" / "prepare.py"), "--params", "params.yaml"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_stage_writes_outputs_and_a_bad_source_leaves_them_untouched(tmp_path):
    ok = _run_stage(tmp_path, {"seed": 0, "prepare": {"source": "digits", "out_dir": "out"}})
    assert ok.returncode == 0, ok.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "test.npz", "train.npz"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"train": 1438, "test": 359} and manifest["image_shape"] == [8, 8, 1]
    line = ok.stdout.strip()
    assert "\n" not in line and line.startswith("prepare: digits:") and manifest["dataset_sha256"] in line
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    bad = _run_stage(tmp_path, {"prepare": {"source": "cifar10", "path": "raw", "out_dir": "out"}})
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prepare: error: ")
    assert "raw/cifar-10-python.tar.gz" in lines[0] and "archive not found" in lines[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
