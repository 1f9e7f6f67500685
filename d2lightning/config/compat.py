"""detectron2's config versions (``detectron2.config.compat``): ``upgrade_config``, ``downgrade_config``.

A config's ``VERSION`` says which key names it uses; detectron2 renamed keys twice (version 1: ``MODEL.RPN_HEAD.NAME``
became ``MODEL.RPN.HEAD_NAME``; version 2, before its public release: ``MODEL.WEIGHT`` became ``MODEL.WEIGHTS``, the
test-time augmentation keys moved under ``TEST.AUG``, the anchor keys under ``MODEL.ANCHOR_GENERATOR``...). Upgrading
applies the renames of each version in turn, downgrading undoes them, and ``CfgNode.merge_from_file`` reads an older
file by downgrading the config to the file's version, merging, and upgrading back, as detectron2 does. A file without
``VERSION`` is taken for version 1 when it has ``MODEL.WEIGHT`` or ``TEST.AUG_ON`` (with a warning), else for the
current version.

Same behaviour as detectron2's where the config has the keys (with
:func:`~d2lightning.config.add_detectron2_defaults`, every one of them). d2lightning's ``get_cfg()`` lacks
detectron2's architecture keys (``MODEL.RPN``, ``MODEL.RETINANET``...): a rename or deletion of a key the config
does not have is skipped, where detectron2, whose converters expect a complete config, would raise.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

__all__ = ["LATEST_VERSION", "downgrade_config", "guess_version", "upgrade_config"]

logger = logging.getLogger(__name__)

LATEST_VERSION = 2
"""The ``VERSION`` of detectron2's (and d2lightning's) current key names."""

# (old name, new name) of each version's renames, applied in this order when upgrading, in reverse when downgrading
_RENAMES: dict[int, list[tuple[str, str]]] = {
    1: [("MODEL.RPN_HEAD.NAME", "MODEL.RPN.HEAD_NAME")],
    2: [
        ("MODEL.WEIGHT", "MODEL.WEIGHTS"),
        ("MODEL.PANOPTIC_FPN.SEMANTIC_LOSS_SCALE", "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT"),
        ("MODEL.PANOPTIC_FPN.RPN_LOSS_SCALE", "MODEL.RPN.LOSS_WEIGHT"),
        ("MODEL.PANOPTIC_FPN.INSTANCE_LOSS_SCALE", "MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT"),
        ("MODEL.PANOPTIC_FPN.COMBINE_ON", "MODEL.PANOPTIC_FPN.COMBINE.ENABLED"),
        ("MODEL.PANOPTIC_FPN.COMBINE_OVERLAP_THRESHOLD", "MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH"),
        ("MODEL.PANOPTIC_FPN.COMBINE_STUFF_AREA_LIMIT", "MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT"),
        (
            "MODEL.PANOPTIC_FPN.COMBINE_INSTANCES_CONFIDENCE_THRESHOLD",
            "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH",
        ),
        ("MODEL.ROI_HEADS.SCORE_THRESH", "MODEL.ROI_HEADS.SCORE_THRESH_TEST"),
        ("MODEL.ROI_HEADS.NMS", "MODEL.ROI_HEADS.NMS_THRESH_TEST"),
        ("MODEL.RETINANET.INFERENCE_SCORE_THRESHOLD", "MODEL.RETINANET.SCORE_THRESH_TEST"),
        ("MODEL.RETINANET.INFERENCE_TOPK_CANDIDATES", "MODEL.RETINANET.TOPK_CANDIDATES_TEST"),
        ("MODEL.RETINANET.INFERENCE_NMS_THRESHOLD", "MODEL.RETINANET.NMS_THRESH_TEST"),
        ("TEST.DETECTIONS_PER_IMG", "TEST.DETECTIONS_PER_IMAGE"),
        ("TEST.AUG_ON", "TEST.AUG.ENABLED"),
        ("TEST.AUG_MIN_SIZES", "TEST.AUG.MIN_SIZES"),
        ("TEST.AUG_MAX_SIZE", "TEST.AUG.MAX_SIZE"),
        ("TEST.AUG_FLIP", "TEST.AUG.FLIP"),
    ],
}
# version 2 also moved the anchors of the architecture in use to MODEL.ANCHOR_GENERATOR
_ANCHORS = (("ASPECT_RATIOS", "ANCHOR_ASPECT_RATIOS"), ("SIZES", "ANCHOR_SIZES"))


def upgrade_config(cfg: Any, to_version: int | None = None) -> Any:
    """A copy of ``cfg`` with the key names of ``to_version`` (detectron2 ``upgrade_config``).

    Args:
        cfg: a ``CfgNode`` with a ``VERSION``.
        to_version: the version to reach; the latest by default.

    Raises:
        ConfigError: ``to_version`` is older than ``cfg.VERSION``, or not a version this code knows.
    """
    to_version = LATEST_VERSION if to_version is None else to_version
    cfg = cfg.clone()
    _check_versions(cfg, to_version, upgrading=True)
    for version in range(cfg.VERSION + 1, to_version + 1):
        for old, new in _RENAMES[version]:
            _rename(cfg, old, new)
        if version == 2:
            _upgrade_anchors(cfg)
        cfg.VERSION = version
    return cfg


def downgrade_config(cfg: Any, to_version: int) -> Any:
    """A copy of ``cfg`` with the key names of the older ``to_version`` (detectron2 ``downgrade_config``).

    As in detectron2, this recovers the older names of the keys (so that an older partial file can be merged),
    not the older defaults or meanings.

    Raises:
        ConfigError: ``to_version`` is newer than ``cfg.VERSION``, or not a version this code knows.
    """
    cfg = cfg.clone()
    _check_versions(cfg, to_version, upgrading=False)
    for version in range(cfg.VERSION, to_version, -1):
        for old, new in reversed(_RENAMES[version]):
            _rename(cfg, new, old)
        if version == 2:
            _downgrade_anchors(cfg)
        cfg.VERSION = version - 1
    return cfg


def guess_version(tree: Mapping[str, Any], filename: str) -> int:
    """The version of a file without ``VERSION``: 1 when it uses ``MODEL.WEIGHT`` or ``TEST.AUG_ON`` (logged as a
    warning, since its keys are then renamed), else :data:`LATEST_VERSION` (detectron2 ``guess_version``)."""
    if _has(tree, "MODEL.WEIGHT") or _has(tree, "TEST.AUG_ON"):
        logger.warning(f"Config {filename!r} has no VERSION; it uses version 1 key names, so it is read as VERSION 1")
        return 1
    return LATEST_VERSION


def _check_versions(cfg: Any, to_version: Any, upgrading: bool) -> None:
    from d2lightning.config.errors import ConfigError

    current = cfg.get("VERSION")
    known = range(0, LATEST_VERSION + 1)
    for name, value in (("the config's VERSION", current), ("to_version", to_version)):
        if isinstance(value, bool) or value not in known:
            raise ConfigError(f"Cannot convert configs: {name} is {value!r}, known versions are 0 to {LATEST_VERSION}")
    if (current > to_version) if upgrading else (current < to_version):
        verb = "upgrade" if upgrading else "downgrade"
        raise ConfigError(f"Cannot {verb} a config from VERSION {current} to {to_version}", key="VERSION")


def _has(tree: Mapping[str, Any], dotted: str) -> bool:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _rename(cfg: Any, old: str, new: str) -> None:
    """Move the value at ``old`` to ``new`` (creating sections), dropping sections left empty; skipped when the
    config has no ``old``."""
    if not _has(cfg, old):
        return
    *parents, leaf = old.split(".")
    section = cfg
    for part in parents:
        section = section[part]
    value = section[leaf]
    *new_parents, new_leaf = new.split(".")
    target = cfg
    for part in new_parents:
        if part not in target:
            target[part] = type(cfg)()
        target = target[part]
    target[new_leaf] = value
    _delete(cfg, old)


def _delete(cfg: Any, dotted: str) -> None:
    """Delete ``dotted`` (when present) and the sections it leaves empty."""
    if not _has(cfg, dotted):
        return
    parts = dotted.split(".")
    chain = [cfg]
    for part in parts[:-1]:
        chain.append(chain[-1][part])
    del chain[-1][parts[-1]]
    for depth in range(len(parts) - 1, 0, -1):
        if len(chain[depth]) == 0:
            del chain[depth - 1][parts[depth - 1]]


def _upgrade_anchors(cfg: Any) -> None:
    if not _has(cfg, "MODEL"):
        return
    retinanet = cfg.MODEL.get("META_ARCHITECTURE") == "RetinaNet"
    source, other = ("RETINANET", "RPN") if retinanet else ("RPN", "RETINANET")
    for new, old in _ANCHORS:
        _rename(cfg, f"MODEL.{source}.{old}", f"MODEL.ANCHOR_GENERATOR.{new}")
        _delete(cfg, f"MODEL.{other}.{old}")
    _delete(cfg, "MODEL.RETINANET.ANCHOR_STRIDES")


def _downgrade_anchors(cfg: Any) -> None:
    for new, old in _ANCHORS:
        _rename(cfg, f"MODEL.ANCHOR_GENERATOR.{new}", f"MODEL.RPN.{old}")
    if _has(cfg, "MODEL.RETINANET"):
        for _, old in _ANCHORS:
            if _has(cfg, f"MODEL.RPN.{old}"):
                cfg.MODEL.RETINANET[old] = cfg.MODEL.RPN[old]
        cfg.MODEL.RETINANET["ANCHOR_STRIDES"] = []  # not used by any version
