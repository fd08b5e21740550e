"""Damaged torch files, replayed: whatever ``torch.load`` raises on them, a checkpoint is set aside and an
encoder file is one UserError naming it, never a traceback.

CI once failed on ``os.urandom`` bytes that the unpickler read as a FRAME of 2^63 bytes (OverflowError,
not in the list the loaders caught then); the files here are fixed or drawn from a seeded generator.
"""

from __future__ import annotations

import io
import random
import struct
from pathlib import Path

import pytest
import torch

from pipeline.data.preprocess import InputSpec
from pipeline.engine.checkpoint import CHECKPOINT, load_checkpoint
from pipeline.errors import UserError
from pipeline.models.encoder import Encoder, EncoderSpec, load_encoder, save_encoder
from pipeline.torch_files import UnreadableTorchFile, load_torch_file
from tests.conftest import damaged

# Each file makes torch.load raise a kind of exception the loaders once let through as a traceback.
CRAFTED = [
    pytest.param(b"\x80\x04\x95" + b"\xff" * 8, False, OverflowError, id="frame-past-2^63"),
    pytest.param(b"\x80\x04\x8e" + (2**40).to_bytes(8, "little"), False, MemoryError,
                 id="bytes8-of-a-terabyte"),
    pytest.param(b"\x80\x02cno_such_module\nthing\n.", False, ModuleNotFoundError, id="mangled-global"),
    pytest.param(b"\x80\x02J\x01\x02", True, struct.error, id="truncated-binint-weights-only"),
]


@pytest.mark.parametrize(("data", "weights_only", "raised"), CRAFTED)
def test_crafted_files_are_unreadable_naming_what_torch_raised(tmp_path, data, weights_only, raised):
    path = tmp_path / "f.pt"
    path.write_bytes(data)
    with pytest.raises(UnreadableTorchFile, match=rf"^{raised.__name__}") as info:
        load_torch_file(path, weights_only=weights_only)
    assert type(info.value.__cause__) is raised
    assert "\n" not in str(info.value) and len(str(info.value)) <= len(raised.__name__) + 2 + 200


def test_a_missing_file_is_not_damage(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_torch_file(tmp_path / "none.pt", weights_only=True)


def test_a_crafted_checkpoint_is_set_aside_and_a_crafted_encoder_is_one_user_error(tmp_path):
    ckpt = tmp_path / CHECKPOINT
    ckpt.write_bytes(b"\x80\x04\x95" + b"\xff" * 8)
    assert load_checkpoint(ckpt) is None
    assert not ckpt.exists() and (tmp_path / (CHECKPOINT + ".corrupt")).exists()
    enc = tmp_path / "encoder.pt"
    enc.write_bytes(b"\x80\x02J\x01\x02")
    with pytest.raises(UserError, match=r"encoder.pt: not a readable encoder file, truncated or corrupt "
                                        r"\(error: "):
        load_encoder(enc)


def _saved(obj: object, *, legacy: bool = False) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def _damaged(rng: random.Random, originals: list[bytes], i: int) -> bytes:
    """Garbage, a truncation or a few flipped bytes of one of ``originals``, by turns."""
    if i % 3 == 0:
        return rng.randbytes(rng.choice([16, 512, 4096]))
    return damaged(rng, rng.choice(originals), truncate=i % 3 == 1, max_flips=8)


def test_seeded_damaged_checkpoints_are_set_aside_or_read_never_raised(tmp_path):
    state = {"fingerprint": "f" * 64, "epoch": 3, "history": [{"loss": 1.0}], "w": torch.randn(16, 4)}
    originals = [_saved(state), _saved(state, legacy=True)]
    rng, causes, read = random.Random(20261130), set(), 0
    ckpt = tmp_path / CHECKPOINT
    for i in range(240):
        ckpt.write_bytes(data := _damaged(rng, originals, i))
        try:
            load_torch_file(ckpt, weights_only=False)
        except UnreadableTorchFile as exc:
            causes.add(type(exc.__cause__))
        got = load_checkpoint(ckpt)
        if got is None:  # set aside, byte for byte
            aside = tmp_path / (CHECKPOINT + ".corrupt")
            assert not ckpt.exists() and aside.read_bytes() == data
            aside.unlink()
        else:
            assert isinstance(got, dict) and "fingerprint" in got
            read += 1
    # The replay reaches the unpickler's corners, not just the zip reader's one error.
    assert len(causes) >= 5, causes
    assert read < 240


def test_seeded_damaged_encoder_files_load_or_raise_one_user_error(tmp_path):
    torch.manual_seed(0)
    spec = EncoderSpec("small", InputSpec(8, 1, (0.3,), (0.4,)), width=4, head_hidden=[8], head_out=4)
    encoder = Encoder(spec)
    save_encoder(encoder, tmp_path / "good.pt")
    original = (tmp_path / "good.pt").read_bytes()
    rng, errors, loaded = random.Random(11), 0, 0
    path: Path = tmp_path / "encoder.pt"
    for i in range(240):
        path.write_bytes(_damaged(rng, [original], i))
        try:
            load_encoder(path)
            loaded += 1
        except UserError as exc:
            assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
            errors += 1
    assert errors > 150 and loaded + errors == 240
