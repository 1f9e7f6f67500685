"""``d2lightning.config``'s LazyConfig API without detectron2: ``LazyConfig`` (load, load_rel, save, apply_overrides,
to_py), ``LazyCall``, ``instantiate``, ``configurable`` — detectron2's behaviour (learned from its
``tests/config/``), and the clear one-line errors for bad input."""

from __future__ import annotations

import dataclasses
import textwrap
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from d2lightning.config import (
    ConfigError,
    ConfigFileError,
    ConfigImportError,
    ConfigTypeError,
    LazyCall,
    LazyConfig,
    LazyTargetError,
    UnknownKeyError,
    configurable,
    get_cfg,
    instantiate,
)

L = LazyCall


@dataclasses.dataclass
class Point:
    x: int
    y: int = 0


class Pair:
    def __init__(self, a: Any, b: Any = None) -> None:
        self.a, self.b = a, b


def _write(root: Path, name: str, source: str) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


# ---------------------------------------------------------------- LazyCall and instantiate
def test_lazycall_records_the_call_as_an_editable_config() -> None:
    cfg = L(torch.nn.Linear)(in_features=2, out_features=3)
    assert isinstance(cfg, DictConfig)
    assert cfg._target_ is torch.nn.Linear and cfg.in_features == 2
    cfg.out_features = 5
    layer = instantiate(cfg)
    assert isinstance(layer, torch.nn.Linear) and layer.out_features == 5


def test_instantiate_is_recursive_through_targets_and_lists() -> None:
    cfg = L(Pair)(
        a=L(Pair)(a=1, b=L(SimpleNamespace)(x=2)),
        b=[L(Point)(x=3), {"plain": L(Point)(x=4)}],  # a mapping without _target_ is left as it is
    )
    obj = instantiate(cfg)
    assert isinstance(obj, Pair) and isinstance(obj.a, Pair) and obj.a.a == 1
    assert obj.a.b == SimpleNamespace(x=2)
    assert isinstance(obj.b, ListConfig) and obj.b[0] == Point(3, 0)
    assert isinstance(obj.b[1], DictConfig) and obj.b[1].plain._target_ == "tests.config.test_lazy_config.Point"
    assert [p for p in instantiate([L(Point)(x=1), 2])] == [Point(1), 2]
    assert instantiate(OmegaConf.create({"no_target": 1})) == {"no_target": 1}


def test_target_as_a_dotted_name_and_dataclass_targets() -> None:
    assert instantiate({"_target_": "collections.OrderedDict", "a": 1}) == OrderedDict(a=1)
    assert instantiate({"_target_": "dict", "a": 1}) == {"a": 1}  # a builtin
    # omegaconf cannot hold a dataclass type: LazyCall stores its dotted name, as detectron2's does
    cfg = L(Point)(x=1, y=2)
    assert cfg._target_ == "tests.config.test_lazy_config.Point"
    assert instantiate(cfg) == Point(1, 2)
    # a structured (dataclass-backed) config instantiates to the dataclass
    assert instantiate(OmegaConf.structured(Point(x=7))) == Point(7, 0)


def test_interpolations_resolve_against_the_whole_config() -> None:
    cfg = OmegaConf.create({"width": 4, "layer": L(torch.nn.Linear)(in_features="${width}", out_features=2)})
    assert instantiate(cfg.layer).in_features == 4


# ---------------------------------------------------------------- load, save, round trip
def test_load_keeps_the_configs_of_a_python_file(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "cfg.py",
        """
        import torch
        from d2lightning.config import LazyCall as L
        model = L(torch.nn.Linear)(in_features=2, out_features=3)
        train = dict(max_iter=10, amp=dict(enabled=False))
        steps = [1, 2]    # plain values (lists too), modules, functions and _private names: dropped, as detectron2
        lr = 0.1
        _hidden = dict(a=1)
        def helper(): pass
        """,
    )
    cfg = LazyConfig.load(str(path))
    assert sorted(cfg.keys()) == ["model", "train"]
    assert isinstance(cfg.train, DictConfig) and cfg.train.amp.enabled is False
    assert LazyConfig.load(path, "train").max_iter == 10
    model, train = LazyConfig.load(path, ("model", "train"))
    assert model.out_features == 3 and train.max_iter == 10


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    cfg = OmegaConf.create(
        {
            "model": L(torch.nn.Linear)(in_features=2, out_features="${train.width}"),
            "train": {"width": 4, "steps": [1, 2], "name": "x"},
            "point": L(Point)(x=1),
        },
        flags={"allow_objects": True},
    )
    LazyConfig.save(cfg, str(tmp_path / "c.yaml"))
    text = (tmp_path / "c.yaml").read_text()
    assert "{_target_: torch.nn.Linear, " in text  # the shortest dotted path that finds the class
    assert "out_features: '${train.width}'" in text  # interpolations are kept as written
    assert not (tmp_path / "c.yaml.pkl").exists()
    back = LazyConfig.load(str(tmp_path / "c.yaml"))
    assert OmegaConf.to_container(back.train) == {"width": 4, "steps": [1, 2], "name": "x"}
    assert instantiate(back.model).out_features == 4
    assert instantiate(back.point) == Point(1)
    assert cfg.model._target_ is torch.nn.Linear  # save works on a copy


def test_save_pickles_what_yaml_cannot_load(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"f": L(Pair)(a=lambda: 1)}, flags={"allow_objects": True})
    LazyConfig.save(cfg, str(tmp_path / "c.yaml"))
    assert (tmp_path / "c.yaml").exists() and (tmp_path / "c.yaml.pkl").exists()


def test_relative_imports_between_config_files(tmp_path: Path) -> None:
    _write(tmp_path, "common/train.py", "train = dict(max_iter=100, output_dir='out')\n")
    _write(tmp_path, "common/optim.py", "SGD = dict(lr=0.1)\n")
    _write(
        tmp_path,
        "models/base.py",
        """
        from ..common.train import train
        train.max_iter = 200            # a copy: the file runs again for every import
        model = dict(depth=50)
        """,
    )
    main = _write(
        tmp_path,
        "models/main.py",
        """
        from .base import model, train
        from ..common.optim import SGD as optimizer
        from ..common import train as train_module
        from . import base
        model.depth = 18
        original = train_module.train
        base_depth = dict(depth=base.model.depth)
        """,
    )
    cfg = LazyConfig.load(str(main))
    assert cfg.model.depth == 18 and cfg.train.max_iter == 200 and cfg.optimizer.lr == 0.1
    assert cfg.original.max_iter == 100  # common/train.py imported again, unchanged
    assert cfg.base_depth.depth == 50
    assert LazyConfig.load(str(tmp_path / "common/train.py")).train.max_iter == 100


def test_load_rel_is_relative_to_the_calling_file(tmp_path: Path) -> None:
    _write(tmp_path, "a/other.py", "x = dict(v=1)\n")
    caller = _write(
        tmp_path, "a/caller.py", "from d2lightning.config import LazyConfig\nx = LazyConfig.load_rel('other.py', 'x')\n"
    )
    assert LazyConfig.load(str(caller)).x.v == 1


def test_yaml_files_load(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.yaml", "model: {_target_: collections.OrderedDict, a: 1}\ntrain: {max_iter: 3}\n")
    cfg = LazyConfig.load(str(path))
    assert cfg.train.max_iter == 3 and instantiate(cfg.model) == OrderedDict(a=1)


def test_to_py_writes_calls_and_assignments() -> None:
    cfg = OmegaConf.create(
        {"model": L(Pair)(a=L(Point)(x=1), b=[1, 2]), "train": {"max_iter": 5, "amp": {"enabled": True}}},
        flags={"allow_objects": True},
    )
    code = LazyConfig.to_py(cfg)
    flat = "".join(code.split())
    assert "cfg.model=tests.config.test_lazy_config.Pair(a=tests.config.test_lazy_config.Point(x=1),b=[1,2])" in flat
    assert "cfg.train.amp.enabled=True" in flat and "cfg.train.max_iter=5" in flat


# ---------------------------------------------------------------- overrides
def _train_cfg() -> DictConfig:
    return OmegaConf.create(
        {"train": {"max_iter": 10, "lr": 0.1, "name": "a", "amp": {"enabled": False}, "steps": [1], "aug": [{"s": 1}]}},
        flags={"allow_objects": True},
    )


def test_overrides_of_existing_keys_are_parsed_as_values() -> None:
    cfg = LazyConfig.apply_overrides(
        _train_cfg(),
        ["train.max_iter=20", "train.lr=1e-3", "train.name=b c", "train.amp.enabled=true", "train.steps=[3, 4]",
         "train.aug.0.s=64"],
    )  # fmt: skip
    assert OmegaConf.to_container(cfg.train) == {
        "max_iter": 20, "lr": 0.001, "name": "b c", "amp": {"enabled": True}, "steps": [3, 4], "aug": [{"s": 64}],
    }  # fmt: skip
    assert LazyConfig.apply_overrides(cfg, ["train.name='quoted'", "train.lr=None"]).train.name == "quoted"
    assert cfg.train.lr is None


def test_a_new_key_is_refused_with_the_closest_one_unless_added_with_plus() -> None:
    cfg = _train_cfg()
    with pytest.raises(UnknownKeyError) as info:
        LazyConfig.apply_overrides(cfg, ["train.max_itr=5"])
    assert str(info.value) == (
        "Unknown config key 'train.max_itr' (in override 'train.max_itr=5'). Did you mean 'train.max_iter'?"
    )
    with pytest.raises(UnknownKeyError, match=r"^Unknown config key 'zzz' .* To add it as a new key, write '\+zzz=1'"):
        LazyConfig.apply_overrides(cfg, ["zzz=1"])
    LazyConfig.apply_overrides(cfg, ["+train.seed=3", "+train.new.section=[1]"])
    assert cfg.train.seed == 3 and cfg.train.new.section == [1]
    with pytest.raises(UnknownKeyError, match=r"^Unknown config key 'train.steps.1' .*Did you mean 'train.steps'\?"):
        LazyConfig.apply_overrides(cfg, ["train.steps.1=5"])  # a list index past its end
    assert OmegaConf.is_struct(cfg) is None  # struct mode only while overriding


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.max_iter", r"^Override 'train.max_iter' is not of the form key=value"),
        ("~train.lr", r"^Override '~train.lr': deleting a key is not supported$"),
        ("train.lr.x=1", r"^Override 'train.lr.x=1': 'train.lr' is a float, not a config with keys$"),
    ],
)
def test_bad_overrides(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LazyConfig.apply_overrides(_train_cfg(), [override])


# ---------------------------------------------------------------- bad input: one clear line each
def test_a_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "bad.py", "a = dict(x=1)\nb = dict(\n")
    with pytest.raises(ConfigFileError) as info:
        LazyConfig.load(str(path))
    assert str(info.value).startswith(f"Config file '{path}' has a syntax error at line 2: ")
    assert "\n" not in str(info.value)


def test_an_error_raised_by_a_config_file_names_the_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "bad.py", "a = dict(x=1)\nb = undefined_name\n")
    with pytest.raises(
        ConfigFileError, match=r"^Config file '.*bad.py', line 2, raised NameError: name 'undefined_name'"
    ):
        LazyConfig.load(str(path))


def test_a_circular_import_shows_the_cycle(tmp_path: Path) -> None:
    _write(tmp_path, "a.py", "from .b import y\nx = dict(v=1)\n")
    _write(tmp_path, "b.py", "from .a import x\ny = dict(v=2)\n")
    with pytest.raises(ConfigFileError, match=r"^Circular import between config files: .*a\.py -> .*b\.py -> .*a\.py$"):
        LazyConfig.load(str(tmp_path / "a.py"))


def test_a_missing_relative_import_names_the_file_looked_for(tmp_path: Path) -> None:
    _write(tmp_path, "a.py", "from .nothing import x\n")
    with pytest.raises(ConfigImportError) as info:
        LazyConfig.load(str(tmp_path / "a.py"))
    assert str(info.value) == (
        f"Config file '{tmp_path / 'a.py'}' imports .nothing, but '{tmp_path / 'nothing.py'}' does not exist (a "
        "relative import in a config file names another config file)"
    )
    assert isinstance(info.value, ConfigFileError) and isinstance(info.value, ImportError)  # what detectron2 raises


@pytest.mark.parametrize(
    "name, message",
    [
        ("missing.txt", r"^Config file 'missing.txt' has to be a Python \(.py\) or YAML \(.yaml/.yml\) file$"),
        ("missing.py", r"^Config file 'missing.py' does not exist$"),
    ],
)
def test_bad_config_file_names(name: str, message: str) -> None:
    with pytest.raises(ConfigFileError, match=message):
        LazyConfig.load(name)


def test_a_target_that_does_not_import_names_the_key_path_and_target() -> None:
    cfg = L(Pair)(a=L(Pair)(a={"_target_": "no_such_package.Model"}), b=1)
    with pytest.raises(LazyTargetError) as info:
        instantiate(cfg)
    assert (
        str(info.value) == "Cannot import _target_ 'no_such_package.Model' at 'a.a': No module named 'no_such_package'"
    )
    with pytest.raises(
        ImportError, match=r"^Cannot import _target_ 'torch.nn.NoSuchLayer' at 'b\[0\]': 'torch.nn' has no"
    ):
        instantiate({"_target_": "collections.OrderedDict", "b": [{"_target_": "torch.nn.NoSuchLayer"}]})


def test_a_target_that_is_not_callable_is_a_clear_error() -> None:
    with pytest.raises(ConfigTypeError, match=r"^_target_ at 'model' is 3 \(int\), which is not callable"):
        instantiate({"_target_": "collections.OrderedDict", "model": {"_target_": 3}})
    with pytest.raises(
        TypeError, match=r"^Cannot instantiate tests.config.test_lazy_config.Point at 'p': .*unexpected keyword"
    ):
        instantiate({"_target_": "dict", "p": L(Point)(z=1)})
    with pytest.raises(TypeError, match=r"^LazyCall target must be a callable, its dotted name or a config; got 3$"):
        L(3)


# ---------------------------------------------------------------- configurable
class Head:
    @configurable
    def __init__(self, num_classes: int, width: int = 8, *, dropout: float = 0.0) -> None:
        self.num_classes, self.width, self.dropout = num_classes, width, dropout

    @classmethod
    def from_config(cls, cfg: Any, width: int = 16) -> dict[str, Any]:
        return {"num_classes": cfg.MODEL.SHAPES_DETECTOR.NUM_CLASSES, "width": width}


@configurable(from_config=lambda cfg, scale=1: {"n": cfg.MODEL.SHAPES_DETECTOR.NUM_CLASSES * scale})
def make_list(n: int, fill: int = 0) -> list[int]:
    return [fill] * n


def test_configurable_class_both_ways() -> None:
    explicit = Head(5, width=4, dropout=0.5)
    assert (explicit.num_classes, explicit.width, explicit.dropout) == (5, 4, 0.5)
    cfg = get_cfg()
    from_cfg = Head(cfg)
    assert (from_cfg.num_classes, from_cfg.width, from_cfg.dropout) == (3, 16, 0.0)
    # from_config's own arguments go to it; the others straight to __init__
    mixed = Head(cfg=cfg, width=32, dropout=0.1)
    assert (mixed.num_classes, mixed.width, mixed.dropout) == (3, 32, 0.1)
    lazy = OmegaConf.create({"MODEL": {"SHAPES_DETECTOR": {"NUM_CLASSES": 7}}})
    assert Head(lazy).num_classes == 7  # an omegaconf DictConfig is a config too


def test_configurable_function_both_ways() -> None:
    assert make_list(2, fill=1) == [1, 1]
    assert make_list(get_cfg(), scale=2) == [0] * 6
    assert make_list(get_cfg(), fill=9) == [9, 9, 9]


def test_configurable_misuse_is_reported() -> None:
    class NoFactory:
        @configurable
        def __init__(self, a: int) -> None:
            self.a = a

    for args in ((1,), (get_cfg(),)):  # checked on every call, as detectron2 does
        with pytest.raises(TypeError, match="NoFactory uses @configurable and must have a 'from_config' classmethod"):
            NoFactory(*args)
        with pytest.raises(AttributeError):  # what detectron2 raises
            NoFactory(*args)

    class WrongFirst:
        @configurable
        def __init__(self, a: int) -> None:
            self.a = a

        @classmethod
        def from_config(cls, config: Any) -> dict[str, Any]:
            return {"a": 1}

    with pytest.raises(TypeError, match=r"from_config must take 'cfg' as its first argument$"):
        WrongFirst(get_cfg())
    with pytest.raises(TypeError, match="Incorrect use of @configurable"):
        configurable(lambda: None)
