"""detectron2's complete default config, added to d2lightning's defaults on request.

d2lightning's :func:`~d2lightning.config.get_cfg` holds detectron2's engine, solver, data and test keys, but not
the keys of detectron2's model zoo architectures (``MODEL.RPN.*``, ``MODEL.ROI_HEADS.*``, ``MODEL.FPN.*``...),
so a model-zoo YAML file does not load into it. :func:`add_detectron2_defaults` adds every key of
``detectron2.config.get_cfg()`` to the registry once; later ``get_cfg()`` calls have them, and model-zoo files
(``_BASE_`` chains included) merge with the same values as in detectron2.

It is explicit rather than automatic: an automatic version would import detectron2 (seconds, and its C
extension) in every ``get_cfg()`` as soon as detectron2 is installed, and would make the set of valid keys, and
so which typos are caught and what ``dump()`` writes, depend on whether detectron2 happens to be installed.
To *train* a detectron2 model, pass detectron2's own ``CfgNode`` to ``DefaultTrainer``: d2lightning's
builders only know d2lightning's architectures.
"""

from __future__ import annotations

from typing import Literal

from d2lightning import _compat
from d2lightning.config.schema import extend_defaults_from_cfgnode

__all__ = ["add_detectron2_defaults"]


def add_detectron2_defaults(on_conflict: Literal["error", "keep"] = "error") -> None:
    """Add every key of detectron2's default config (``detectron2.config.get_cfg()``) to :func:`get_cfg`'s.

    No detectron2 equivalent (detectron2's ``get_cfg`` always has them). Idempotent: the keys both define must
    have equal defaults, so calling it twice is a no-op.

    Args:
        on_conflict: "error" raises when detectron2 and d2lightning disagree on a key's default (a detectron2
            release whose defaults differ); "keep" keeps d2lightning's default for such keys.

    Raises:
        ImportError: when detectron2 is not installed.
        ConfigError: on a key whose default differs, with ``on_conflict="error"``; nothing is added then.
        ValueError: for another ``on_conflict``.

    Example::

        from d2lightning.config import add_detectron2_defaults, get_cfg

        add_detectron2_defaults()
        cfg = get_cfg()
        cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    """
    if on_conflict not in ("error", "keep"):
        raise ValueError(f"on_conflict must be 'error' or 'keep', got {on_conflict!r}")
    extend_defaults_from_cfgnode(_compat.detectron2_default_cfg(), source="detectron2", on_conflict=on_conflict)
