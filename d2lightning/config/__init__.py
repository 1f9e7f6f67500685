"""detectron2-compatible configs (``detectron2.config``'s yacs API) on omegaconf, strictly validated.

Example::

    from d2lightning.config import get_cfg, apply_overrides

    cfg = get_cfg()
    cfg.merge_from_file("my_config.yaml")   # _BASE_ chains, relative to each file
    apply_overrides(cfg, ["SOLVER.BASE_LR", "0.01", "LIGHTNING.PRECISION=bf16-mixed"])
    cfg.freeze()
"""

from d2lightning.config.config import CfgNode, get_cfg, global_cfg, set_global_cfg
from d2lightning.config.detectron2_defaults import add_detectron2_defaults
from d2lightning.config.errors import (
    ConfigError,
    ConfigFileError,
    ConfigTypeError,
    FrozenConfigError,
    UnknownKeyError,
)
from d2lightning.config.overrides import apply_overrides, parse_overrides
from d2lightning.config.schema import extend_defaults, extend_defaults_from_cfgnode
from d2lightning.config.spec import KeySpec

__all__ = [
    "CfgNode",
    "ConfigError",
    "ConfigFileError",
    "ConfigTypeError",
    "FrozenConfigError",
    "KeySpec",
    "UnknownKeyError",
    "add_detectron2_defaults",
    "apply_overrides",
    "extend_defaults",
    "extend_defaults_from_cfgnode",
    "get_cfg",
    "global_cfg",
    "parse_overrides",
    "set_global_cfg",
]
