"""Distributed start-up: which launcher made this process (``cluster``), the worker processes of ``launch``
(``workers``), and DDP wrapping (``ddp``)."""
