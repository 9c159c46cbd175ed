"""The dataset catalog and the stored upload format (see catalog.py and stored.py).

Importing this package registers the built-in datasets (builtin.py).
"""

from app.core.datasets import builtin as _builtin  # noqa: F401  (registers digits, ...)
from app.core.datasets.catalog import (
    DATASETS,
    DatasetInfo,
    DatasetUnavailableError,
    InMemoryData,
    UploadedInfo,
    dataset_info,
    holdout_mask,
    known_datasets,
    load_source,
    register_dataset,
    resolve_classes,
    target_names,
)

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetUnavailableError",
    "InMemoryData",
    "UploadedInfo",
    "dataset_info",
    "holdout_mask",
    "known_datasets",
    "load_source",
    "register_dataset",
    "resolve_classes",
    "target_names",
]
