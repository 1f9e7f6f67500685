"""Built-in datasets, registered on import (detectron2 ``data/datasets/builtin.py``).

- ``shapes_train``: 10000 synthetic 96x96 images (seed 1).
- ``shapes_val``: 200 held-out synthetic 96x96 images (seed 2).
"""

from d2lightning.data.datasets.shapes import (
    SHAPES_CLASSES,
    ShapesSpec,
    load_shapes_dicts,
    register_shapes,
    render_shapes_image,
)

__all__ = [
    "BUILTIN_SHAPES",
    "SHAPES_CLASSES",
    "ShapesSpec",
    "load_shapes_dicts",
    "register_all_shapes",
    "register_shapes",
    "render_shapes_image",
]

BUILTIN_SHAPES: dict[str, tuple[ShapesSpec, int]] = {
    "shapes_train": (ShapesSpec(seed=1), 10000),
    "shapes_val": (ShapesSpec(seed=2), 200),
}


def register_all_shapes() -> None:
    """Register the datasets of :data:`BUILTIN_SHAPES` that are not registered yet."""
    from d2lightning.data.catalog import DatasetCatalog

    for name, (spec, n) in BUILTIN_SHAPES.items():
        if name not in DatasetCatalog:
            register_shapes(name, spec, n)


register_all_shapes()
