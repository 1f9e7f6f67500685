"""A small SimpleTrainer job for the preemption tests: ``python tests/jobs/preemption_job.py OUT MAX_ITER [PAUSE_AT]``.

Trains a linear model on a deterministic, seekable stream (batch ``i`` depends only on ``i`` and the rank), so
a resumed run is bit-identical to an uninterrupted one. Hooks: IterationTimer, PeriodicCheckpointer (period 8,
main process), PeriodicWriter (metrics.json every 20 iterations, main process) — and, inside a "Slurm job"
(``SLURM_JOB_ID`` set), the ``SlurmPreemption`` hook that ``train()`` adds by itself. ``--resume`` semantics:
the run starts after the last checkpoint of ``OUT`` when there is one.

With ``PAUSE_AT`` (on rank 0), the run stops after that iteration, writes ``OUT/paused`` (holding its pid) and
waits for ``OUT/go``: the test sends its signal in between. ``NPROC`` (env, default 1) > 1 runs ``launch``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn


class Stream:
    """Batch ``i`` of rank ``r`` is a fixed function of ``(r, i)``; ``set_start_iteration`` seeks."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.start = 0

    def set_start_iteration(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[torch.Tensor]:
        i = self.start
        while True:
            g = torch.Generator().manual_seed(1000 * self.rank + i)
            yield torch.randn(8, 4, generator=g)
            i += 1


class Regressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)

    def forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.linear(batch)
        return {"loss_a": (out - 1).pow(2).mean(), "loss_b": out.abs().mean()}


def main(out: str, max_iter: int, pause_at: int | None) -> None:
    from d2lightning.checkpoint import DetectionCheckpointer
    from d2lightning.engine import SimpleTrainer, hooks
    from d2lightning.utils import comm
    from d2lightning.utils.events import JSONWriter
    from d2lightning.utils.logger import setup_logger

    setup_logger(out, distributed_rank=comm.get_rank())
    torch.manual_seed(0)
    model = Regressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    trainer = SimpleTrainer(model, Stream(comm.get_rank()), optimizer)
    checkpointer = DetectionCheckpointer(model, out, optimizer=optimizer, trainer=trainer)
    main_process = comm.is_main_process()
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.PeriodicCheckpointer(checkpointer, 8) if main_process else None,
            hooks.PeriodicWriter([JSONWriter(os.path.join(out, "metrics.json"))], 20) if main_process else None,
            _Pause(out, pause_at) if pause_at is not None and main_process else None,
        ]
    )
    checkpointer.resume_or_load("", resume=True)
    start = trainer.iter + 1 if checkpointer.has_checkpoint() else 0
    trainer.train(start, max_iter)


class _Pause:
    """After iteration ``at``: announce the pid in ``out/paused``, wait (at most 60 s) for ``out/go``."""

    def __init__(self, out: str, at: int) -> None:
        self.out, self.at = Path(out), at

    def after_step(self) -> None:
        if self.trainer.iter != self.at:  # type: ignore[attr-defined]
            return
        (self.out / "paused").write_text(str(os.getpid()))
        deadline = time.monotonic() + 60
        while not (self.out / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.02)


if __name__ == "__main__":
    out_dir, iters = sys.argv[1], int(sys.argv[2])
    pause = int(sys.argv[3]) if len(sys.argv) > 3 else None
    nproc = int(os.environ.get("NPROC", "1"))
    if nproc > 1:
        from d2lightning.engine import launch

        launch(main, nproc, args=(out_dir, iters, pause))
    else:
        main(out_dir, iters, pause)
