"""Crash safety of d2lightning.checkpoint: atomic writes, SIGKILL mid-save, corrupt files, resume fallback."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from d2lightning.checkpoint import CorruptCheckpointError, DetectionCheckpointer
from d2lightning.checkpoint.atomic import atomic_save, atomic_write_text, remove_stale_temp_files
from d2lightning.engine import SimpleTrainer, hooks
from tests.helpers import REPO
from tests.helpers.checkpoint import files, loader_from
from tests.helpers.training import SimpleModel


def make_trainer(out: Path, start: int) -> tuple[SimpleTrainer, DetectionCheckpointer]:
    torch.manual_seed(0)
    model = SimpleModel()
    opt = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9)
    trainer = SimpleTrainer(model, loader_from(start), opt)
    ckpt = DetectionCheckpointer(model, str(out), optimizer=opt, trainer=trainer)
    sched = torch.optim.lr_scheduler.StepLR(opt, 4, gamma=0.5)
    trainer.register_hooks([hooks.LRScheduler(opt, sched), hooks.PeriodicCheckpointer(ckpt, 5)])
    return trainer, ckpt


def test_atomic_write_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "m.pth"
    atomic_save({"v": 1}, path)

    class Boom:
        def __reduce__(self) -> tuple:
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_save({"v": Boom()}, path)
    assert torch.load(path, weights_only=True) == {"v": 1}
    assert os.listdir(tmp_path) == ["m.pth"]
    atomic_write_text(tmp_path / "last_checkpoint", "m.pth")
    assert (tmp_path / "last_checkpoint").read_text() == "m.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "m.pth"]


def test_stale_temp_files_are_removed_on_resume_by_the_saving_process(tmp_path: Path) -> None:
    stale = [".model_0000009.pth.k2j3_x9a.tmp", ".last_checkpoint.abc123.tmp"]
    others = [".notes.txt.abc.tmp", "model.tmp", ".model_0000004.pth"]
    for name in stale + others:
        (tmp_path / name).write_bytes(b"x")
    _, reader = make_trainer(tmp_path, 0)
    reader.save_to_disk = False  # a non-main process leaves them alone
    reader.resume_or_load("", resume=True)
    assert files(tmp_path) == sorted(stale + others)
    _, ckpt = make_trainer(tmp_path, 0)
    assert remove_stale_temp_files(tmp_path, lambda name: False) == []
    ckpt.resume_or_load("", resume=True)
    assert files(tmp_path) == sorted(others)


CHILD = """
import os, sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from tests.checkpoint.test_checkpoint_atomic import make_trainer

out = Path(sys.argv[1])
real_replace = os.replace

def slow_replace(src, dst):
    # the checkpoint of iteration 9 is complete in its temp file; stall before it takes the final name
    if os.path.basename(dst) == "model_0000009.pth":
        (out / "writing").touch()
        time.sleep(120)
    real_replace(src, dst)

os.replace = slow_replace
trainer, _ = make_trainer(out, 0)
trainer.train(0, 15)
"""


def test_sigkill_during_a_checkpoint_write_resumes_from_the_last_complete_one(tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD.format(root=str(REPO))))
    child = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180  # a safety net against a stuck child, not a timing assertion
        while not (out / "writing").exists():
            if child.poll() is not None:
                pytest.fail(f"the child ended before writing: {child.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                pytest.fail("the child never reached the checkpoint write of iteration 9")
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL

    names = sorted(os.listdir(out))
    assert [n for n in names if not n.startswith(".")] == ["last_checkpoint", "model_0000004.pth", "writing"]
    assert [n.split(".tmp")[0][:-9] for n in names if n.startswith(".")] == [".model_0000009.pth"]  # unrenamed
    assert (out / "last_checkpoint").read_text() == "model_0000004.pth"

    # resume like DefaultTrainer: load everything, continue after the restored iteration
    resumed, ckpt = make_trainer(out, 5)
    assert ckpt.resume_or_load("", resume=True) == {"iteration": 4}
    assert resumed.iter == 4
    assert files(out) == ["last_checkpoint", "model_0000004.pth", "writing"]  # the temp file is cleaned up
    resumed.train(resumed.iter + 1, 15)

    reference, _ = make_trainer(tmp_path / "reference", 0)
    reference.train(0, 15)
    for (name, a), b in zip(resumed.model.state_dict().items(), reference.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_resume_falls_back_to_the_newest_readable_checkpoint(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    trainer, _ = make_trainer(tmp_path, 0)
    trainer.train(0, 12)
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    for i, name in enumerate(["model_0000004.pth", "model_0000009.pth", "model_final.pth"]):
        os.utime(tmp_path / name, (1000 + i, 1000 + i))  # write order, whatever the clock resolution
    final = tmp_path / "model_final.pth"
    final.write_bytes(final.read_bytes()[:300])

    resumed, ckpt = make_trainer(tmp_path, 10)
    with caplog.at_level(logging.WARNING):
        left = ckpt.resume_or_load("", resume=True)
    assert left == {"iteration": 9}
    assert resumed.iter == 9
    assert f"Cannot resume from {final}: Checkpoint {final} is truncated or corrupt" in caplog.text
    assert f"Resuming from {tmp_path / 'model_0000009.pth'} instead of {final}" in caplog.text


def test_resume_falls_back_when_last_checkpoint_names_a_missing_file(tmp_path: Path) -> None:
    trainer, ckpt = make_trainer(tmp_path, 0)
    trainer.train(0, 5)
    ckpt.tag_last_checkpoint("model_0000099.pth")
    _, ckpt2 = make_trainer(tmp_path, 0)
    assert ckpt2.resume_or_load("", resume=True) == {"iteration": 4}


def test_resume_with_no_readable_checkpoint_raises_naming_each_file(tmp_path: Path) -> None:
    _, ckpt = make_trainer(tmp_path, 0)
    ckpt.save("model_0000004", iteration=4)
    (tmp_path / "model_0000004.pth").write_bytes(b"truncated")
    with pytest.raises(CorruptCheckpointError) as error:
        ckpt.resume_or_load("", resume=True)
    assert str(error.value) == (
        f"No checkpoint in '{tmp_path}' can be read: model_0000004.pth (it is not a PyTorch file (neither a zip "
        "archive nor torch's legacy format)). Delete or replace the damaged files, or train into another OUTPUT_DIR"
    )


def test_written_files_get_the_usual_permissions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from d2lightning.checkpoint import atomic as atomic_module

    monkeypatch.setattr(atomic_module, "_UMASK", 0o022)
    atomic_write_text(tmp_path / "last_checkpoint", "model_final.pth")
    assert (tmp_path / "last_checkpoint").stat().st_mode & 0o777 == 0o644  # as open() would create it (not 0600)
