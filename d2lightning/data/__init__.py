"""detectron2 ``data``: dataset/metadata catalogs, the built-in shapes dataset, samplers and loaders.

Importing this package registers the built-in datasets ``shapes_train`` and ``shapes_val``.
"""

from d2lightning.data import datasets, transforms
from d2lightning.data.build import (
    build_batch_data_loader,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
    trivial_batch_collator,
)
from d2lightning.data.catalog import DatasetCatalog, Metadata, MetadataCatalog
from d2lightning.data.dataset_mapper import DatasetMapper
from d2lightning.data.samplers import InferenceSampler, TrainingSampler

__all__ = [
    "DatasetCatalog",
    "DatasetMapper",
    "InferenceSampler",
    "Metadata",
    "MetadataCatalog",
    "TrainingSampler",
    "build_batch_data_loader",
    "build_detection_test_loader",
    "build_detection_train_loader",
    "datasets",
    "get_detection_dataset_dicts",
    "transforms",
    "trivial_batch_collator",
]
