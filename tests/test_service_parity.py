"""Training and serving decode a file the same way: for every PIL mode the service accepts and EXIF
orientations 1 to 8, the service's embedding of a file equals the evaluation's embedding of what the
prepare stage stored for it (8x8 files, so no resize is involved)."""

# The store fixture is imported from test_service and taken as a parameter by name, which ruff reads as a
# redefinition.
# ruff: noqa: F811

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from pipeline import tracking
from pipeline.config import Params, RegisterConfig
from pipeline.data.folder import scan_folder
from pipeline.data.format import load_dataset
from pipeline.data.preprocess import InputSpec
from pipeline.embed import main as embed_main
from pipeline.evaluation.features import extract_features
from pipeline.models import Encoder, EncoderSpec
from pipeline.stages import prepare
from pipeline.tracking.registry import load_registered, log_encoder_model, register_encoder
from service.app import create_app
from tests.test_service import SIDE, Store, embeddings, make_settings, store, wait_ready  # noqa: F401

GREY_MODES = ("1", "L", "LA", "I;16", "I", "F")
COLOUR_MODES = ("P", "P+transparency", "RGB", "RGBA", "CMYK")


def picture(mode: str, seed: int) -> tuple[Image.Image, str]:
    """An 8x8 image of random content in ``mode`` and the format that stores that mode."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    grey = rgb[:, :, 0]
    if mode == "1":
        return Image.fromarray(grey > 127), "PNG"
    if mode == "L":
        return Image.fromarray(grey), "PNG"
    if mode == "LA":
        return Image.fromarray(rgb[:, :, :2], "LA"), "PNG"
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (SIDE, SIDE)).astype(np.uint16)), "PNG"
    if mode == "I":
        return Image.fromarray(rng.integers(-1000, 80_000, (SIDE, SIDE)).astype(np.int32)), "TIFF"
    if mode == "F":
        return Image.fromarray(rng.uniform(-20, 280, (SIDE, SIDE)).astype(np.float32)), "TIFF"
    if mode.startswith("P"):
        return Image.fromarray(rgb).quantize(16), "PNG"
    if mode == "RGBA":
        return Image.fromarray(np.dstack([rgb, grey]), "RGBA"), "PNG"
    if mode == "CMYK":
        return Image.fromarray(rgb).convert("CMYK"), "TIFF"
    return Image.fromarray(rgb), "PNG"


def write_folder(root: Path, modes: tuple[str, ...], jpeg_mode: str) -> None:
    """root/train/a/<every mode and orientation> and one file in root/test/a (the official split)."""
    train = root / "train" / "a"
    train.mkdir(parents=True)
    for i, mode in enumerate(modes):
        img, fmt = picture(mode, i)
        extra = {"transparency": 3} if mode == "P+transparency" else {}
        img.save(train / f"{i:02d}-{mode.replace(';', '')}.{fmt.lower()}", fmt, **extra)
    for orientation in range(1, 9):  # a phone photo's rotation, in its EXIF block
        img = picture("RGB", 100 + orientation)[0].convert(jpeg_mode)
        exif = img.getexif()
        exif[0x0112] = orientation
        img.save(train / f"50-orientation-{orientation}.jpg", "JPEG", exif=exif, quality=90)
    (root / "test" / "a").mkdir(parents=True)
    picture("L", 999)[0].save(root / "test" / "a" / "x.png")


def register_rgb_encoder(store: Store) -> str:
    torch.manual_seed(5)
    enc = Encoder(EncoderSpec("small", InputSpec(SIDE, 3, (0.5, 0.4, 0.3), (0.2, 0.3, 0.4)), width=8,
                              head_hidden=[32], head_out=16))
    enc.train()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for _ in range(3):
            enc.project(torch.rand(32, 3, SIDE, SIDE))
    with tracking.start_run(store.cfg, run_name="rgb-encoder"):
        logged = log_encoder_model(enc.eval()).model_uri
    register_encoder(logged, RegisterConfig(model_name="rgb-encoder"), {"val_linear_top1": 0.5}, {})
    return "models:/rgb-encoder@champion"


@pytest.mark.parametrize("colour", [False, True], ids=["grey folder, 1-channel model",
                                                        "mixed folder, 3-channel model"])
def test_the_service_embeds_a_file_as_the_evaluation_embeds_what_prepare_stored(store, tmp_path, colour):
    root, out = tmp_path / "photos", tmp_path / "prepared"
    write_folder(root, GREY_MODES + COLOUR_MODES if colour else GREY_MODES, "RGB" if colour else "L")
    uri = register_rgb_encoder(store) if colour else store.model_uri

    # The prepare stage for real, then what it stored, read back as the evaluation reads it.
    prepare.run(Params.model_validate({"prepare": {"source": "folder", "path": str(root), "out_dir": str(out)}}))
    stored = load_dataset(out).train.images
    paths = scan_folder(root, None, 0.2, 0).train.paths  # the order prepare stored them in
    assert stored.shape == (len(paths), SIDE, SIDE, 3 if colour else 1)
    # The rotation is in what was stored: orientation 6 is the stored picture turned clockwise.
    jpeg6 = Image.open(paths[-3]).convert("RGB" if colour else "L")
    turned = np.rot90(np.asarray(jpeg6).reshape(SIDE, SIDE, -1), -1)
    np.testing.assert_array_equal(stored[-3], turned)

    encoder = load_registered(uri).encoder
    want = extract_features(encoder, stored)
    with TestClient(create_app(make_settings(store, model_uri=uri))) as c:
        wait_ready(c.get)
        files = [p.read_bytes() for p in paths]
        for layer, reference in (("backbone", want.h), ("projection", want.z)):
            got = []
            for lo in range(0, len(files), 8):
                r = c.post("/v1/embeddings", json={"images": [base64.b64encode(f).decode() for f in files[lo:lo + 8]],
                                                   "layer": layer})
                assert r.status_code == 200, r.text
                got.append(embeddings(r))
            np.testing.assert_allclose(np.concatenate(got), reference.numpy(), atol=1e-5, rtol=0)
        # the same through multipart uploads
        r = c.post("/v1/embeddings", files=[("files", (p.name, io.BytesIO(p.read_bytes()))) for p in paths[:8]])
        np.testing.assert_allclose(embeddings(r), want.h[:8].numpy(), atol=1e-5, rtol=0)


def test_batch_embedding_of_a_folder_equals_the_service_and_lists_the_bad_file(store, tmp_path, capsys):
    import subprocess
    import sys

    import pyarrow.parquet as pq

    root = tmp_path / "many"
    rng = np.random.default_rng(7)
    for i in range(300):  # grey, colour and 16-bit files in nested folders
        sub = root / f"part{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        mode = ("L", "RGB", "I;16")[i % 3]
        img = picture(mode, 1000 + i)[0] if mode != "RGB" else Image.fromarray(
            rng.integers(0, 256, (SIDE + i % 5, SIDE, 3), dtype=np.uint8))  # some need a resize
        img.save(sub / f"{i:03d}.png")
    (root / "part1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "notes.txt").write_text("not an image: skipped by its extension")
    params = tmp_path / "params.yaml"
    params.write_text(f"tracking:\n  tracking_uri: {store.tracking_uri}\n")
    out = tmp_path / "emb" / "many.parquet"
    cmd = [sys.executable, "-m", "pipeline.embed", str(root), "--out", str(out), "--model-uri", store.model_uri,
           "--params", str(params), "--batch-size", "64"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"embed: skipped {root / 'part1' / 'broken.png'}: " in done.stderr
    assert "embed: 300 images" in done.stdout and "1 file(s) skipped" in done.stdout

    table = pq.read_table(out)
    paths = [Path(p) for p in table.column("path").to_pylist()]
    got = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    assert len(paths) == 300 and paths == sorted(paths) and got.shape == (300, store.want.h.shape[1])
    assert table.schema.metadata[b"model_version"] == b"1" and table.schema.metadata[b"layer"] == b"backbone"
    with TestClient(create_app(make_settings(store))) as c:
        wait_ready(c.get)
        want = []
        for lo in range(0, len(paths), 8):
            files = [("files", (p.name, p.read_bytes())) for p in paths[lo:lo + 8]]
            r = c.post("/v1/embeddings", files=files)
            assert r.status_code == 200, r.text
            want.append(embeddings(r))
    np.testing.assert_allclose(got, np.concatenate(want), atol=1e-5, rtol=0)

    # In this process: a file list into .npy beside its path list; a missing input is one line and exit 2.
    listing = tmp_path / "list.txt"
    listing.write_text("# five files\n" + "".join(f"{p}\n" for p in paths[:5]))
    npy = tmp_path / "five.npy"
    assert embed_main([str(listing), "--out", str(npy)] + cmd[6:]) == 0
    np.testing.assert_allclose(np.load(npy), got[:5], atol=1e-6)
    assert (tmp_path / "five.paths.txt").read_text().split() == [str(p) for p in paths[:5]]
    capsys.readouterr()
    assert embed_main([str(tmp_path / "nowhere"), "--out", str(npy)] + cmd[6:]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"embed: error: {tmp_path / 'nowhere'}: no such folder, file list or image"]
