"""Write a config tree out: YAML text (yacs ``CfgNode.dump``) and an omegaconf ``DictConfig``.

The YAML is what ``merge_from_file`` reads back to an equal cfg: tuples are written as lists (restored
from the key's type on reading), and strings that omegaconf's YAML loader would read as numbers (``1e-4``)
are quoted.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

__all__ = ["to_omegaconf", "to_yaml"]

_EXPONENT_FLOAT = re.compile(r"[-+]?(\d[\d_]*)?\.?\d*[eE][-+]?\d+")


class _Dumper(yaml.SafeDumper):
    """SafeDumper that also quotes strings omegaconf's loader would read as floats (``1e-4``)."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if _EXPONENT_FLOAT.fullmatch(value):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="'")
    return dumper.represent_str(value)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(tuple, yaml.SafeDumper.represent_list)


def to_yaml(tree: dict[str, Any], **kwargs: Any) -> str:
    """YAML text of a nested dict, keys sorted unless ``sort_keys=False``; kwargs go to ``yaml.dump``."""
    kwargs.setdefault("Dumper", _Dumper)
    return str(yaml.dump(tree, **kwargs))


def to_omegaconf(tree: dict[str, Any]) -> DictConfig:
    """A struct-mode ``DictConfig`` of a nested dict; ``${`` in strings stays literal (no interpolation)."""
    conf = OmegaConf.create(_escape(tree))
    OmegaConf.set_struct(conf, True)
    return conf


def _escape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _escape(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_escape(v) for v in value]
    if isinstance(value, str):
        return value.replace("${", "\\${")
    return value
