"""detectron2-compatible configs on omegaconf: the yacs API (``CfgNode``, ``get_cfg``), strictly validated, and
the Python "LazyConfig" API (``LazyConfig``, ``LazyCall``, ``instantiate``), plus ``configurable`` and the version
conversions (``upgrade_config``, ``downgrade_config``): every public name of ``detectron2.config``.

Example::

    from d2lightning.config import get_cfg, apply_overrides

    cfg = get_cfg()
    cfg.merge_from_file("my_config.yaml")   # _BASE_ chains, relative to each file
    apply_overrides(cfg, ["SOLVER.BASE_LR", "0.01", "LIGHTNING.PRECISION=bf16-mixed"])
    cfg.freeze()

    lazy = LazyConfig.load(get_config_file("shapes_detector.py"))  # d2lightning.model_zoo
    model = instantiate(lazy.model)
"""

from d2lightning.config.compat import downgrade_config, upgrade_config
from d2lightning.config.config import CfgNode, get_cfg, global_cfg, set_global_cfg
from d2lightning.config.configurable import configurable
from d2lightning.config.detectron2_defaults import add_detectron2_defaults
from d2lightning.config.errors import (
    ConfigError,
    ConfigFileError,
    ConfigImportError,
    ConfigTypeError,
    FrozenConfigError,
    UnknownKeyError,
)
from d2lightning.config.instantiate import LazyTargetError, instantiate
from d2lightning.config.lazy import LazyCall, LazyConfig
from d2lightning.config.overrides import apply_overrides, parse_overrides
from d2lightning.config.schema import extend_defaults, extend_defaults_from_cfgnode
from d2lightning.config.spec import KeySpec

__all__ = [
    "CfgNode",
    "ConfigError",
    "ConfigFileError",
    "ConfigImportError",
    "ConfigTypeError",
    "FrozenConfigError",
    "KeySpec",
    "LazyCall",
    "LazyConfig",
    "LazyTargetError",
    "UnknownKeyError",
    "add_detectron2_defaults",
    "apply_overrides",
    "configurable",
    "downgrade_config",
    "extend_defaults",
    "extend_defaults_from_cfgnode",
    "get_cfg",
    "global_cfg",
    "instantiate",
    "parse_overrides",
    "set_global_cfg",
    "upgrade_config",
]
