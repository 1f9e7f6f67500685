"""d2lightning: detectron2's training engine running on PyTorch Lightning.

``from d2lightning.engine import SimpleTrainer, hooks`` is a drop-in for ``detectron2.engine``;
``D2LightningModule`` and ``HookCallback`` bring detectron2 models and hooks into any Lightning Trainer.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and the API reference; at run time resolved by __getattr__ below
    from d2lightning.engine.adapter import HookCallback
    from d2lightning.engine.module import D2LightningModule

__version__ = "0.1.0.dev0"
__all__ = ["D2LightningModule", "HookCallback", "__version__"]


def __getattr__(name: str) -> Any:
    # Resolved lazily so that `import d2lightning.cli` can set process-wide options before torch is imported.
    if name == "D2LightningModule":
        from d2lightning.engine.module import D2LightningModule

        return D2LightningModule
    if name == "HookCallback":
        from d2lightning.engine.adapter import HookCallback

        return HookCallback
    raise AttributeError(f"module 'd2lightning' has no attribute {name!r}")
