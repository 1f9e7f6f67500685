"""detectron2's ``checkpoint`` package: ``Checkpointer``, ``PeriodicCheckpointer``, ``DetectionCheckpointer``.

``from d2lightning.checkpoint import DetectionCheckpointer`` replaces ``from detectron2.checkpoint import ...``.
Files keep detectron2's layout (``model_0004999.pth``, ``model_final.pth``, ``last_checkpoint``), are written
atomically with a CRC-32 checksum inside (verified on every load), and — when saved during training — also
hold Lightning's full state, so each one can be resumed either with ``resume_or_load`` or with
``lightning.pytorch.Trainer.fit(ckpt_path=...)``.
"""

from d2lightning.checkpoint.checkpointer import Checkpointer, CorruptCheckpointError
from d2lightning.checkpoint.detection_checkpoint import DetectionCheckpointer
from d2lightning.checkpoint.periodic_checkpointer import PeriodicCheckpointer

__all__ = ["Checkpointer", "CorruptCheckpointError", "DetectionCheckpointer", "PeriodicCheckpointer"]
