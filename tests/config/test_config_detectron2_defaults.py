"""``d2lightning.config.add_detectron2_defaults``: model-zoo YAML files load into d2lightning's config.

After the call, ``get_cfg()`` holds every key of ``detectron2.config.get_cfg()``, and merging a model-zoo file
(with its ``_BASE_`` chain) gives exactly the values detectron2's own config gets. The key registry is
process-wide, so each test restores it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from d2lightning import _compat
from d2lightning.config import UnknownKeyError, add_detectron2_defaults, get_cfg, schema
from tests.helpers.detectron2_runs import RCNN_ZOO_CONFIG, requires_detectron2


@pytest.fixture(autouse=True)
def restored_registry() -> Iterator[None]:
    saved = copy.deepcopy(schema._TREE)
    yield
    schema._TREE.clear()
    schema._TREE.update(saved)


def _plain(value: Any) -> Any:
    """Nested dicts with lists (yacs keeps tuples, d2lightning lists, for the same YAML)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@requires_detectron2
@pytest.mark.parametrize("zoo_file", [RCNN_ZOO_CONFIG, "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"])
def test_model_zoo_files_load_with_detectron2s_values(zoo_file: str) -> None:
    from detectron2 import model_zoo
    from detectron2.config import get_cfg as detectron2_get_cfg

    path = model_zoo.get_config_file(zoo_file)
    with pytest.raises(UnknownKeyError, match=r"Unknown config key 'MODEL.BACKBONE'"):  # d2lightning alone
        get_cfg().merge_from_file(path)
    add_detectron2_defaults()
    ours = get_cfg()
    ours.merge_from_file(path)
    theirs = detectron2_get_cfg()
    theirs.merge_from_file(path)
    ours_dict, theirs_dict = _plain(ours.to_dict()), _plain(dict(theirs))

    def common(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        return {k: common(v, b[k]) if isinstance(v, dict) else v for k, v in a.items() if k in b}

    assert common(ours_dict, theirs_dict) == _plain(theirs)  # every detectron2 key, with detectron2's value
    assert ours.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    assert ours.MODEL.RPN.IN_FEATURES == ["p2", "p3", "p4", "p5", "p6"]


@requires_detectron2
def test_adding_twice_is_a_no_op() -> None:
    add_detectron2_defaults()
    first = get_cfg().to_dict()
    add_detectron2_defaults()
    assert get_cfg().to_dict() == first


def test_without_detectron2_it_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_compat, "detectron2_available", lambda: False)
    with pytest.raises(ImportError, match=r"^detectron2's default config needs detectron2, which is not installed"):
        add_detectron2_defaults()


def test_bad_on_conflict_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"on_conflict must be 'error' or 'keep', got 'ignore'"):
        add_detectron2_defaults(on_conflict="ignore")  # type: ignore[arg-type]
