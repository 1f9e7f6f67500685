"""With a real detectron2: its LazyConfig objects and files work with d2lightning's and the other way round, and every
public name of ``detectron2.engine.*``, ``detectron2.utils.{events,comm,logger,env}`` and ``detectron2.config`` exists
in d2lightning with detectron2's signature."""

from __future__ import annotations

import importlib
import inspect
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from d2lightning.config import LazyCall, LazyConfig, instantiate
from tests.helpers.detectron2_runs import DETECTRON2_MARKS

pytestmark = DETECTRON2_MARKS

#: detectron2 module -> d2lightning module
MODULES = {
    f"detectron2.{name}": f"d2lightning.{name}"
    for name in [
        "engine", "engine.defaults", "engine.launch", "engine.train_loop", "engine.hooks",
        "utils.events", "utils.comm", "utils.logger", "utils.env", "config",
    ]
}  # fmt: skip
#: Deliberate differences, each documented where the name is defined.
SIGNATURE_EXCEPTIONS = {
    # d2lightning's own logger is "d2lightning"; default_setup sets up "detectron2" and "fvcore" as detectron2 does
    ("d2lightning.utils.logger", "setup_logger"): "name default",
}


def _public_names(module: types.ModuleType) -> set[str]:
    """``__all__``, plus the functions/classes defined in the module (or, for a package, in its submodules), plus its
    constants of builtin types."""
    names = set(getattr(module, "__all__", ()))
    for name, obj in vars(module).items():
        if name.startswith("_") or isinstance(obj, types.ModuleType):
            continue
        defined_here = str(getattr(obj, "__module__", "")).startswith(module.__name__)
        constant = not callable(obj) and type(obj).__module__ in ("builtins", "datetime")
        if (callable(obj) and defined_here) or constant:
            names.add(name)
    return names


def _parameters(obj: Any) -> list[tuple[str, Any, str]]:
    params = inspect.signature(obj).parameters.values()
    return [(p.name, p.kind, "" if p.default is inspect.Parameter.empty else repr(p.default)) for p in params]


def _compatible(ours: list[tuple[str, Any, str]], theirs: list[tuple[str, Any, str]]) -> bool:
    """detectron2's parameters, in order, with the same kinds and defaults; d2lightning may add keyword-only
    parameters with defaults after them (``accumulate_grad_batches``). ``**kwargs`` match whatever their name."""
    extra = ours[len(theirs) :]
    same = [
        (a[1], a[2]) == (b[1], b[2]) and (a[0] == b[0] or a[1] == inspect.Parameter.VAR_KEYWORD)
        for a, b in zip(ours, theirs, strict=False)
    ]
    return (
        len(ours) >= len(theirs) and all(same) and all(p[1] == inspect.Parameter.KEYWORD_ONLY and p[2] for p in extra)
    )


@pytest.mark.parametrize("d2_name", sorted(MODULES))
def test_every_public_name_exists_with_detectron2s_signature(d2_name: str) -> None:
    theirs, ours = importlib.import_module(d2_name), importlib.import_module(MODULES[d2_name])
    names = _public_names(theirs)
    assert names, f"no public names found in {d2_name}"
    missing = sorted(n for n in names if not hasattr(ours, n))
    assert missing == [], f"{MODULES[d2_name]} lacks {missing}"
    mismatched = []
    for name in sorted(names):
        obj = getattr(theirs, name)
        if not callable(obj) or (ours.__name__, name) in SIGNATURE_EXCEPTIONS:
            continue
        try:
            expected = _parameters(obj)
        except (TypeError, ValueError):  # no signature to compare (a builtin)
            continue
        if not _compatible(_parameters(getattr(ours, name)), expected):
            mismatched.append(name)
    assert mismatched == []


def test_the_documented_signature_difference_is_only_the_default_name() -> None:
    from detectron2.utils.logger import setup_logger as theirs

    from d2lightning.utils.logger import setup_logger as ours

    diff = [(a, b) for a, b in zip(_parameters(ours), _parameters(theirs), strict=True) if a != b]
    assert diff == [
        (
            ("name", inspect.Parameter.KEYWORD_ONLY, "'d2lightning'"),
            ("name", inspect.Parameter.KEYWORD_ONLY, "'detectron2'"),
        )
    ]


# ---------------------------------------------------------------- configs cross over
def test_lazycall_of_either_library_instantiates_with_the_other() -> None:
    from detectron2.config import LazyCall as D2LazyCall
    from detectron2.config import instantiate as d2_instantiate

    for make, build in ((D2LazyCall, instantiate), (LazyCall, d2_instantiate)):
        cfg = make(_Pair)(a=make(torch.nn.Linear)(in_features=2, out_features=3), b=[make("torch.nn.ReLU")()])
        built = build(cfg)
        assert isinstance(built, _Pair) and built.a.out_features == 3 and isinstance(built.b[0], torch.nn.ReLU)
    assert d2_instantiate(LazyCall(_Point)(x=1)) == instantiate(D2LazyCall(_Point)(x=1)) == _Point(1)


def _d2_config(relative: str) -> str:
    import detectron2

    path = Path(detectron2.__file__).resolve().parents[1] / "configs" / relative
    if not path.is_file():  # an installed package keeps its configs inside it
        path = Path(detectron2.__file__).resolve().parent / "model_zoo" / "configs" / relative
    return str(path)


@pytest.mark.parametrize(
    "relative",
    ["COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py", "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py"],
)
def test_detectron2s_lazyconfig_files_load_like_detectron2s_loader(relative: str, tmp_path: Path) -> None:
    from detectron2.config import LazyConfig as D2LazyConfig

    path = _d2_config(relative)
    ours, theirs = LazyConfig.load(path), D2LazyConfig.load(path)
    assert sorted(ours) == sorted(theirs) == ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
    LazyConfig.save(ours, str(tmp_path / "ours.yaml"))
    D2LazyConfig.save(theirs, str(tmp_path / "theirs.yaml"))
    assert (tmp_path / "ours.yaml").read_text() == (tmp_path / "theirs.yaml").read_text()
    # overrides act the same (for keys the config has), and the models built from both are the same network
    overrides = ["model.roi_heads.num_classes=2", "model.proposal_generator.pre_nms_topk=[100,50]"]
    LazyConfig.apply_overrides(ours, overrides)
    D2LazyConfig.apply_overrides(theirs, overrides)
    assert str(instantiate(ours.model)) == str(instantiate(theirs.model))


def test_our_lazyconfig_files_load_with_detectron2(tmp_path: Path) -> None:
    from detectron2.config import LazyConfig as D2LazyConfig
    from detectron2.config import instantiate as d2_instantiate

    from d2lightning.model_zoo import get_config_file

    demo = get_config_file("shapes_detector.py")
    cfg = D2LazyConfig.load(demo)
    assert type(d2_instantiate(cfg.model)).__name__ == "ShapesDetector"
    assert cfg.train.max_iter == 600
    LazyConfig.save(cfg, str(tmp_path / "ours.yaml"))
    D2LazyConfig.save(cfg, str(tmp_path / "theirs.yaml"))
    assert (tmp_path / "ours.yaml").read_text() == (tmp_path / "theirs.yaml").read_text()
    assert LazyConfig.to_py(cfg) == D2LazyConfig.to_py(cfg)


def test_configurable_accepts_detectron2s_cfgnode() -> None:
    from detectron2.config import get_cfg

    from d2lightning.modeling.meta_arch.shapes_detector import ShapesDetector

    cfg = get_cfg()
    cfg.MODEL.PIXEL_STD = [57.375, 57.120, 58.395]
    model = ShapesDetector(cfg)  # detectron2's own CfgNode goes through from_config
    assert model.num_classes == 3 and model.pixel_std.flatten().tolist() == pytest.approx([57.375, 57.120, 58.395])


class _Point:
    def __init__(self, x: int) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Point) and other.x == self.x


class _Pair:
    def __init__(self, a: Any, b: Any = None) -> None:
        self.a, self.b = a, b
