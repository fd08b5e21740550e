"""The prepared data set as an MLflow dataset input of a training run (``mlflow.log_input``).

MLflow lists a run's inputs in its ``datasets`` table and UI, and finds every run that trained on one
data set by its digest. What the pipeline records:

- name: the prepare source (``digits``, ``cifar10``, ``cifar100``, ``folder``);
- digest: the manifest's ``dataset_sha256``, cut to the 36 characters MLflow's digest column holds
  (MLflow refuses longer digests; the run's ``dataset_sha256`` tag keeps all 64);
- source: where prepare read it: the archive or folder of ``prepare.path`` as params.yaml writes it
  (relative paths stay relative: no absolute path of one machine), or, without a path, the code that
  produced it (scikit-learn's digits, torchvision's CIFAR download);
- schema: uint8 images ``(-1, H, W, C)`` and int64 labels ``(-1,)``, from the manifest.

Only metadata is logged (a :class:`~mlflow.data.meta_dataset.MetaDataset`): the arrays live in DVC.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import get_dataset_source_from_json
from mlflow.data.meta_dataset import MetaDataset
from mlflow.types import Schema, TensorSpec

from pipeline.config import PrepareConfig

DIGEST_CHARS = 36  # mlflow.utils.validation.MAX_DATASET_DIGEST_SIZE (the column is VARCHAR(36))

_LOADERS = {  # what produced the data when params.yaml names no path
    "digits": "sklearn.datasets.load_digits",
    "cifar10": "torchvision.datasets.CIFAR10(download=True)",
    "cifar100": "torchvision.datasets.CIFAR100(download=True)",
}


def dataset_source(prepare: PrepareConfig) -> DatasetSource:
    if prepare.path:
        # MLflow's "local" source class is generated at import; the registry builds it by type name.
        return get_dataset_source_from_json(json.dumps({"uri": prepare.path}), source_type="local")
    return CodeDatasetSource({"prepare.source": prepare.source,
                              "loader": _LOADERS.get(prepare.source, prepare.source)})


def prepared_dataset(manifest: dict, prepare: PrepareConfig) -> MetaDataset:
    """The MLflow dataset that stands for the prepared arrays ``manifest`` describes."""
    h, w, c = (int(s) for s in manifest["image_shape"])
    schema = Schema([TensorSpec(np.dtype(np.uint8), (-1, h, w, c), "images"),
                     TensorSpec(np.dtype(np.int64), (-1,), "labels")])
    # MLflow's MetaDataset implements ``profile`` (None) without declaring it to type checkers.
    return MetaDataset(dataset_source(prepare), name=str(manifest["source"]),  # type: ignore[abstract]
                       digest=str(manifest["dataset_sha256"])[:DIGEST_CHARS], schema=schema)


def log_dataset_input(manifest: dict, prepare: PrepareConfig, context: str = "train") -> MetaDataset:
    """Log the prepared data set as an input of the active run; ``context`` says how the run used it."""
    dataset = prepared_dataset(manifest, prepare)
    mlflow.log_input(dataset, context=context)
    return dataset
