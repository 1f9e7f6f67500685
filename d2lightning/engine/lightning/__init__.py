"""The Lightning bridge: the run, the LightningModule around a detectron2-style trainer, the step backend, the
Trainer factory, and the one module that touches Lightning's private API (``_private``)."""
