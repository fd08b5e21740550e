"""Batch embedding: ``python -m pipeline.embed <folder | file list | image>... --out FILE`` embeds any number
of images with a registered encoder (the champion by default) into Parquet, or .npy beside a path list.

Each file goes through the service's decoder and pre-processing (:mod:`pipeline.data.decode`,
:func:`pipeline.data.preprocess.fit_image`), so its embedding is the service's. :class:`Embedder` is the
inference path both use.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.config import Params
from pipeline.data.decode import DecodeError, decode_image
from pipeline.data.folder import image_extensions
from pipeline.data.preprocess import InputSpec, fit_image, to_model_input
from pipeline.io import atomic_path
from pipeline.models import Encoder

log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], torch.Tensor]
# The frozen TorchScript graph (see freeze_for_inference); torch 2.x marks the API deprecated in favour of
# torch.compile, which needs a C++ compiler at start-up that the Docker image does not carry.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=FutureWarning)
# How far a frozen graph may be from the eager module on the check batch before it is not used.
FREEZE_TOLERANCE = 1e-5


def freeze_for_inference(module: torch.nn.Module, example: torch.Tensor) -> Forward | None:
    """``module`` traced and frozen by TorchScript (batch norm folded into the convolutions, weights
    constant, no Python per layer), or None when it cannot be, or does not match ``module`` to
    :data:`FREEZE_TOLERANCE` on ``example`` and its first row.

    On the digits encoder a 1-image forward costs 2.8 times less CPU frozen than eager (README "The
    embedding service"); the answers agree to 1e-9.

    Args:
        module: an eval-mode module whose forward takes one tensor; it is left untouched.
        example: a batch of at least two inputs (a batch of one would pin the batch size).
    """
    try:
        with torch.no_grad():
            frozen = torch.jit.freeze(torch.jit.trace(module, example))
            for x in (example, example[:1]):
                got, want = frozen(x), module(x)
                if got.shape != want.shape or float((got - want).abs().max()) > FREEZE_TOLERANCE:
                    log.warning("the frozen graph of %s does not match it; using it eager", type(module).__name__)
                    return None
    except Exception as exc:  # a module TorchScript cannot trace: eager is still right
        log.warning("cannot freeze %s for inference (%s: %s); using it eager", type(module).__name__,
                    type(exc).__name__, exc)
        return None
    return frozen


class Embedder:
    """An encoder ready for inference on ``device``: its frozen graphs when they match it, else itself.

    Args:
        encoder: the encoder (moved to ``device``, put in eval mode).
        device: where it runs.
        freeze: try :func:`freeze_for_inference` (the backbone and the head each fall back on their own).
    """

    def __init__(self, encoder: Encoder, device: torch.device | str = "cpu", freeze: bool = True) -> None:
        self.encoder = encoder.to(device).eval()
        self.device = torch.device(device)
        self.backbone: Forward | None = None
        self.head: Forward | None = None
        if freeze:
            s = encoder.spec.input
            x = torch.rand(2, s.channels, s.image_size, s.image_size, device=self.device)
            self.backbone = freeze_for_inference(self.encoder, x)
            with torch.no_grad():
                h = self.encoder(x)
            self.head = freeze_for_inference(self.encoder.head, h)

    @property
    def spec(self) -> InputSpec:
        """The input the encoder takes (side, channels)."""
        return self.encoder.spec.input

    def embed(self, images: np.ndarray, projection: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 (N, S, S, C) -> float32 backbone h (N, feature_dim) and projection z (N, projection_dim),
        z only with ``projection``; the computation of
        :func:`pipeline.evaluation.features.extract_features` (to_model_input, the eval-mode encoder)."""
        with torch.inference_mode():
            x = to_model_input(images, self.spec, self.device)
            h = (self.backbone or self.encoder)(x)
            z = (self.head or self.encoder.head)(h) if projection else None
            return h.float().cpu().numpy(), (z.float().cpu().numpy() if z is not None else None)


# ------------------------------------------------------------------------------------- the files

def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files named by ``inputs``, in order: a folder's image files (recursively, sorted, hidden
    ones skipped), a file list's lines (a text file, one path per line, relative to the working folder;
    ``#`` comments), or an image file itself.

    Raises:
        FileNotFoundError: an input that does not exist.
        ValueError: inputs that hold no image file.
    """
    extensions = image_extensions()
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in extensions
                            and not any(part.startswith(".") for part in p.relative_to(item).parts))
        elif item.suffix.lower() in extensions:
            if not item.exists():
                raise FileNotFoundError(f"{item}: no such image file")
            paths.append(item)
        elif item.is_file():
            lines = (line.strip() for line in item.read_text().splitlines())
            paths += [Path(line) for line in lines if line and not line.startswith("#")]
        else:
            raise FileNotFoundError(f"{item}: no such folder, file list or image")
    if not paths:
        raise ValueError(f"{', '.join(map(str, inputs))}: no image files ({', '.join(sorted(extensions))})")
    return paths


def _load(path: Path, spec: InputSpec) -> np.ndarray | str:
    """uint8 (S, S, C) for ``spec``, or the reason the file cannot be embedded."""
    try:
        return fit_image(decode_image(path, spec.image_size), spec)
    except DecodeError as exc:
        return str(exc)
    except OSError as exc:  # gone, unreadable, a folder
        return exc.strerror or type(exc).__name__


@dataclass
class Batch:
    """Embeddings of one batch of files, and the files that could not be embedded."""

    paths: list[Path]  # embedded, in order
    rows: np.ndarray  # float32 (len(paths), D)
    errors: list[tuple[Path, str]]


def embed_files(paths: Sequence[Path], embedder: Embedder, layer: str = "backbone", batch_size: int = 256,
                workers: int | None = None, progress: bool = False) -> Iterator[Batch]:
    """Embed ``paths`` batch by batch, in order; memory holds two batches whatever their number.

    The next batch is decoded by ``workers`` threads (PIL releases the GIL) while the encoder runs on
    this one.

    Args:
        paths: image files.
        embedder: the encoder.
        layer: ``backbone`` (h) or ``projection`` (z).
        batch_size: images per forward pass.
        workers: decoding threads (default: two per CPU core: a thread waiting for the GIL or the
            scheduler leaves its core to another; 2.5 times the images/s of one per core on photos).
        progress: show a tqdm bar.

    Yields:
        One :class:`Batch` per ``batch_size`` files.
    """
    spec = embedder.spec
    chunks = [list(paths[lo:lo + batch_size]) for lo in range(0, len(paths), batch_size)]
    bar = tqdm(total=len(paths), desc="embed", unit="img", disable=not progress)
    with ThreadPoolExecutor(workers or 2 * (os.cpu_count() or 1), thread_name_prefix="decode") as pool:
        def submit(chunk: list[Path]) -> list[Future[np.ndarray | str]]:
            return [pool.submit(_load, p, spec) for p in chunk]

        pending = submit(chunks[0]) if chunks else []
        for i, chunk in enumerate(chunks):
            loaded = [f.result() for f in pending]
            pending = submit(chunks[i + 1]) if i + 1 < len(chunks) else []
            good = [(p, a) for p, a in zip(chunk, loaded, strict=True) if isinstance(a, np.ndarray)]
            errors = [(p, a) for p, a in zip(chunk, loaded, strict=True) if isinstance(a, str)]
            rows = np.empty((0, 0), np.float32)
            if good:
                h, z = embedder.embed(np.stack([a for _, a in good]), projection=layer == "projection")
                rows = z if layer == "projection" and z is not None else h
            bar.update(len(chunk))
            yield Batch([p for p, _ in good], rows, errors)
    bar.close()


# ------------------------------------------------------------------------------------- the outputs

def write_parquet(out: Path, batches: Iterator[Batch], dim: int, metadata: dict[str, str]) -> tuple[int, list]:
    """Stream batches into a Parquet file (one row group per batch): ``path`` (string) and ``embedding``
    (fixed-size list of float32); ``metadata`` goes into the schema. Written to a temporary file and
    renamed. Returns (rows written, errors)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("path", pa.string()), ("embedding", pa.list_(pa.float32(), dim))],
                       metadata={k: str(v) for k, v in metadata.items()})
    n, errors = 0, []
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for b in batches:
            errors += b.errors
            if b.paths:
                flat = pa.array(np.ascontiguousarray(b.rows, dtype=np.float32).reshape(-1))
                writer.write_table(pa.table({"path": [str(p) for p in b.paths],
                                             "embedding": pa.FixedSizeListArray.from_arrays(flat, dim)},
                                            schema=schema))
                n += len(b.paths)
    return n, errors


def write_npy(out: Path, batches: Iterator[Batch], dim: int) -> tuple[int, list]:
    """Collect batches into ``out`` (float32 (N, D)) and ``<out stem>.paths.txt`` beside it (one path a
    line, in row order), each written to a temporary file and renamed. Returns (rows written, errors)."""
    paths: list[str] = []
    rows: list[np.ndarray] = []
    errors: list = []
    for b in batches:
        errors += b.errors
        if b.paths:
            paths += [str(p) for p in b.paths]
            rows.append(b.rows)
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.save(f, np.concatenate(rows) if rows else np.empty((0, dim), np.float32))
    with atomic_path(out.with_suffix(".paths.txt")) as tmp:
        tmp.write_text("".join(p + "\n" for p in paths))
    return len(paths), errors


# ------------------------------------------------------------------------------------- the command

def run(params: Params, args: argparse.Namespace) -> None:
    """The command's body: load the model, embed every file, write the output, list the bad files."""
    import mlflow

    from pipeline.tracking.registry import load_registered
    from pipeline.tracking.runs import tracking_uri

    out = Path(args.out)
    if out.suffix not in (".parquet", ".npy"):
        raise ValueError(f"{out}: --out must end in .parquet or .npy")
    paths = list_images(args.inputs)
    uri = tracking_uri(params.tracking)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model_uri = args.model_uri or params.serve.model_uri
    loaded = load_registered(model_uri)
    embedder = Embedder(loaded.encoder, args.device)
    enc = loaded.encoder
    dim = enc.projection_dim if args.layer == "projection" else enc.feature_dim
    batches = embed_files(paths, embedder, args.layer, args.batch_size, args.workers, progress=sys.stderr.isatty())
    meta = {"model_uri": model_uri, "model_name": loaded.name or "", "model_version": loaded.version or "",
            "layer": args.layer, "image_size": enc.spec.input.image_size, "channels": enc.spec.input.channels}
    if out.suffix == ".parquet":
        n, errors = write_parquet(out, batches, dim, meta)
    else:
        n, errors = write_npy(out, batches, dim)
    for path, why in errors:
        print(f"embed: skipped {path}: {why}", file=sys.stderr)
    print(f"embed: {n} images -> {out} ({args.layer}, {dim}-d, model {loaded.name} version {loaded.version})"
          + (f"; {len(errors)} file(s) skipped, listed above" if errors else ""))


def add_args(p: argparse.ArgumentParser) -> None:
    """The command's arguments (beside the stages' ``--params``)."""
    p.add_argument("inputs", nargs="+", help="folders (searched recursively), file lists (one path a line) "
                                             "or image files")
    p.add_argument("--out", required=True, help="output: .parquet (path, embedding) or .npy (+ .paths.txt)")
    p.add_argument("--model-uri", help="default: params.yaml serve.model_uri (models:/sparsehead-encoder@champion)")
    p.add_argument("--layer", choices=("backbone", "projection"), default="backbone")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, help="decoding threads (default: two per CPU core)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.embed``; exit 2 with one line on bad input (the stages' contract)."""
    from pipeline.cli import stage_main

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return stage_main("embed", run, add_args, argv)


if __name__ == "__main__":
    sys.exit(main())
