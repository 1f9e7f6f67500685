"""Layers with detectron2's names (``detectron2.layers``) and fvcore's BN utilities."""

from d2lightning.layers.batch_norm import BN_MODULE_TYPES, get_bn_modules, update_bn_stats

__all__ = ["BN_MODULE_TYPES", "get_bn_modules", "update_bn_stats"]
