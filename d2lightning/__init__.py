"""d2lightning: detectron2's training engine running on PyTorch Lightning.

``from d2lightning.engine import SimpleTrainer, hooks`` is a drop-in for ``detectron2.engine``;
``D2LightningModule`` and ``HookCallback`` bring detectron2 models and hooks into any Lightning Trainer.
"""

from d2lightning.engine.adapter import HookCallback
from d2lightning.engine.module import D2LightningModule

__version__ = "0.1.0.dev0"
__all__ = ["D2LightningModule", "HookCallback", "__version__"]
