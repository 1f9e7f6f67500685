"""``d2lightning.model_zoo``: the configs shipped inside the package, found by name (detectron2 ``model_zoo``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from d2lightning.config import ConfigFileError, get_cfg
from d2lightning.model_zoo import builtin_config_names, get_config_file, model_zoo, resolve_config_file
from tests.helpers import REPO


def test_the_demo_and_its_base_are_the_checkouts_top_level_configs() -> None:
    assert {"Base-D2Lightning.yaml", "shapes_detector.yaml"} <= set(builtin_config_names())
    path = Path(get_config_file("shapes_detector"))
    assert path == REPO / "configs" / "shapes_detector.yaml"  # the tests run from the checkout, not a wheel
    cfg = get_cfg()
    cfg.merge_from_file(path)  # its _BASE_ is found beside it
    assert (cfg.MODEL.META_ARCHITECTURE, cfg.SOLVER.MAX_ITER, cfg.DATASETS.TRAIN) == (
        "ShapesDetector",
        600,
        ("shapes_train",),
    )


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty config folder in place of the package's."""
    folder = tmp_path / "configs"
    folder.mkdir()
    monkeypatch.setattr(model_zoo, "CONFIG_DIR", folder)
    return folder


def test_every_yaml_and_python_file_of_the_folder_is_a_builtin_config(config_dir: Path) -> None:
    for name in ("a.yaml", "lazy.py", "COCO/b.yaml", "_helper.py", "notes.txt", "COCO/__init__.py"):
        (config_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (config_dir / name).write_text("")
    assert builtin_config_names() == ["COCO/b.yaml", "a.yaml", "lazy.py"]
    assert get_config_file("COCO/b") == str(config_dir / "COCO" / "b.yaml")
    assert get_config_file("lazy") == str(config_dir / "lazy.py")


def test_a_bare_name_means_the_yaml_config_when_a_python_one_shares_it(config_dir: Path) -> None:
    (config_dir / "demo.yaml").write_text("")
    (config_dir / "demo.py").write_text("")
    assert get_config_file("demo") == str(config_dir / "demo.yaml")
    assert get_config_file("demo.yaml") == str(config_dir / "demo.yaml")
    assert get_config_file("demo.py") == str(config_dir / "demo.py")


def test_an_unknown_name_lists_the_builtin_configs_and_the_closest(config_dir: Path) -> None:
    (config_dir / "shapes_detector.yaml").write_text("")
    (config_dir / "Base-D2Lightning.yaml").write_text("")
    with pytest.raises(ConfigFileError) as info:
        get_config_file("shapes_detectr")
    assert str(info.value) == (
        "'shapes_detectr' is not a built-in config; built-in configs: Base-D2Lightning.yaml, shapes_detector.yaml; "
        "did you mean 'shapes_detector.yaml'?"
    )
    assert info.value.path == "shapes_detectr"
    with pytest.raises(ConfigFileError, match=r"built-in configs: Base-D2Lightning.yaml, shapes_detector.yaml$"):
        get_config_file("retinanet")  # nothing close: no suggestion


@pytest.mark.parametrize(
    ("value", "closest"),
    [
        ("configs/shapes_detector.yaml", "shapes_detector.yaml"),  # the path of a source checkout, elsewhere
        ("shapes_detector.yml", "shapes_detector.yaml"),
        ("base-d2lightning", "Base-D2Lightning.yaml"),
    ],
)
def test_resolve_suggests_from_the_last_path_component(
    config_dir: Path, value: str, closest: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")  # not the checkout, whose configs/shapes_detector.yaml exists
    (config_dir / "shapes_detector.yaml").write_text("")
    (config_dir / "Base-D2Lightning.yaml").write_text("")
    with pytest.raises(ConfigFileError) as info:
        resolve_config_file(value)
    assert str(info.value) == (
        f"Config file {value!r} does not exist and is not a built-in config either; "
        f"built-in configs: Base-D2Lightning.yaml, shapes_detector.yaml; did you mean {closest!r}?"
    )


def test_a_file_wins_over_a_builtin_config_of_the_same_name(
    config_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (config_dir / "shapes_detector.yaml").write_text("")
    work = tmp_path / "work"
    work.mkdir()
    (work / "shapes_detector").write_text("MODEL: {}\n")
    monkeypatch.chdir(work)
    assert resolve_config_file("shapes_detector") == "shapes_detector"
    os.remove(work / "shapes_detector")
    assert resolve_config_file("shapes_detector") == str(config_dir / "shapes_detector.yaml")
    assert resolve_config_file(Path("shapes_detector.yaml")) == str(config_dir / "shapes_detector.yaml")
