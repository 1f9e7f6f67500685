"""Tests for d2lightning.checkpoint.Checkpointer / DetectionCheckpointer: fvcore's and detectron2's behaviour."""

from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from d2lightning.checkpoint import Checkpointer, CorruptCheckpointError, DetectionCheckpointer
from tests.helpers.training import SimpleModel


class Net(nn.Module):
    def __init__(self, out: int = 2) -> None:
        super().__init__()
        self.fc = nn.Linear(3, out)
        self.head = nn.Linear(out, 1)
        self.register_buffer("pixel_mean", torch.zeros(3))


def fill(model: nn.Module, value: float) -> nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
    return model


class Counter:
    """The smallest checkpointable: any object with state_dict/load_state_dict."""

    def __init__(self, n: int = 0) -> None:
        self.n = n

    def state_dict(self) -> dict:
        return {"n": self.n}

    def load_state_dict(self, sd: dict) -> None:
        self.n = sd["n"]


def test_save_writes_detectron2_layout_and_last_checkpoint(tmp_path: Path) -> None:
    model = fill(Net(), 1.0)
    opt = torch.optim.SGD(model.parameters(), 0.5)
    Checkpointer(model, str(tmp_path), optimizer=opt, counter=Counter(7)).save("model_0000004", iteration=4)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000004.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000004.pth"
    data = torch.load(tmp_path / "model_0000004.pth", weights_only=True)
    assert sorted(data) == ["counter", "iteration", "model", "optimizer"]
    assert sorted(data["model"]) == ["fc.bias", "fc.weight", "head.bias", "head.weight", "pixel_mean"]
    assert data["counter"] == {"n": 7}
    assert data["iteration"] == 4
    assert data["optimizer"]["param_groups"][0]["lr"] == 0.5


def test_save_does_nothing_without_save_dir_or_when_not_saving_to_disk(tmp_path: Path) -> None:
    Checkpointer(Net(), "").save("a")
    Checkpointer(Net(), str(tmp_path), save_to_disk=False).save("b")
    assert os.listdir(tmp_path) == []


def test_save_unwraps_data_parallel_and_creates_the_directory(tmp_path: Path) -> None:
    out = tmp_path / "new" / "dir"
    Checkpointer(nn.DataParallel(Net()), str(out)).save("m")
    assert sorted(torch.load(out / "m.pth", weights_only=True)["model"])[0] == "fc.bias"


def test_load_restores_model_and_checkpointables_and_returns_the_rest(tmp_path: Path) -> None:
    src = fill(Net(), 3.0)
    Checkpointer(src, str(tmp_path), counter=Counter(5)).save("m", iteration=9, note="x")
    dst, counter = fill(Net(), 0.0), Counter()
    left = Checkpointer(dst, str(tmp_path), counter=counter).load(str(tmp_path / "m.pth"))
    assert left == {"iteration": 9, "note": "x"}
    assert counter.n == 5
    assert torch.equal(dst.fc.weight, torch.full((2, 3), 3.0))


def test_load_with_named_checkpointables_loads_only_those(tmp_path: Path) -> None:
    Checkpointer(Net(), str(tmp_path), a=Counter(1), b=Counter(2)).save("m")
    a, b = Counter(), Counter()
    left = Checkpointer(Net(), str(tmp_path), a=a, b=b).load(str(tmp_path / "m.pth"), checkpointables=["b"])
    assert (a.n, b.n) == (0, 2)
    assert left == {"a": {"n": 1}}


def test_load_of_empty_path_initializes_from_scratch(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        assert Checkpointer(Net()).load("") == {}
    assert "No checkpoint found. Initializing model from scratch" in caplog.text


def test_load_strips_module_prefix(tmp_path: Path) -> None:
    sd = {f"module.{k}": v for k, v in fill(Net(), 2.0).state_dict().items()}
    torch.save({"model": sd}, tmp_path / "ddp.pth")
    dst = fill(Net(), 0.0)
    Checkpointer(dst).load(str(tmp_path / "ddp.pth"))
    assert torch.equal(dst.head.weight, torch.full((1, 2), 2.0))


def test_load_drops_shape_mismatches_and_logs_missing_and_unexpected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sd = fill(Net(out=4), 2.0).state_dict()
    del sd["fc.bias"]
    sd["extra.w"] = torch.ones(1)
    torch.save({"model": sd}, tmp_path / "m.pth")
    dst = fill(Net(out=2), 0.0)
    with caplog.at_level(logging.WARNING):
        Checkpointer(dst).load(str(tmp_path / "m.pth"))
    assert (
        "Skip loading parameter 'fc.weight' to the model due to incompatible shapes: (4, 3) in the checkpoint "
        "but (2, 3) in the model!" in caplog.text
    )
    assert "Skip loading parameter 'head.weight'" in caplog.text
    assert "Some model parameters or buffers are not found in the checkpoint:\nfc.{bias, weight}\nhead.weight" in (
        caplog.text
    )
    assert "The checkpoint state_dict contains keys that are not used by the model:\n  extra.w" in caplog.text
    assert torch.equal(dst.fc.weight, torch.zeros(2, 3))  # mismatched: untouched
    assert torch.equal(dst.head.bias, torch.full((1,), 2.0))  # matching: loaded


def test_has_checkpoint_get_checkpoint_file_and_all_files(tmp_path: Path) -> None:
    ckpt = Checkpointer(Net(), str(tmp_path))
    assert not ckpt.has_checkpoint()
    assert ckpt.get_checkpoint_file() == ""
    assert ckpt.get_all_checkpoint_files() == []
    ckpt.save("model_0000001")
    ckpt.save("model_0000000")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert ckpt.has_checkpoint()
    assert ckpt.get_checkpoint_file() == os.path.join(str(tmp_path), "model_0000000.pth")
    assert ckpt.get_all_checkpoint_files() == [
        os.path.join(str(tmp_path), "model_0000000.pth"),
        os.path.join(str(tmp_path), "model_0000001.pth"),
    ]
    ckpt.tag_last_checkpoint("model_0000001.pth")
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


def test_resume_or_load_resumes_everything_from_last_checkpoint(tmp_path: Path) -> None:
    Checkpointer(fill(Net(), 4.0), str(tmp_path), counter=Counter(3)).save("model_0000002", iteration=2)
    torch.save({"model": fill(Net(), 9.0).state_dict()}, tmp_path / "weights.pth")
    dst, counter = Net(), Counter()
    left = Checkpointer(dst, str(tmp_path), counter=counter).resume_or_load(str(tmp_path / "weights.pth"))
    assert left == {"iteration": 2}
    assert counter.n == 3
    assert torch.equal(dst.fc.bias, torch.full((2,), 4.0))


def test_resume_or_load_without_resume_loads_only_the_weights_of_path(tmp_path: Path) -> None:
    Checkpointer(fill(Net(), 4.0), str(tmp_path), counter=Counter(3)).save("model_0000002", iteration=2)
    torch.save({"model": fill(Net(), 9.0).state_dict(), "counter": {"n": 8}}, tmp_path / "weights.pth")
    dst, counter = Net(), Counter()
    left = Checkpointer(dst, str(tmp_path), counter=counter).resume_or_load(str(tmp_path / "weights.pth"), resume=False)
    assert left == {"counter": {"n": 8}}  # not loaded: checkpointables=[]
    assert counter.n == 0
    assert torch.equal(dst.fc.bias, torch.full((2,), 9.0))


def test_trainer_is_a_checkpointable(tmp_path: Path) -> None:
    from d2lightning.engine import SimpleTrainer
    from tests.helpers.training import infinite_loader

    model = SimpleModel()
    opt = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9)
    trainer = SimpleTrainer(model, infinite_loader(), opt)
    trainer.iter = 41
    Checkpointer(model, str(tmp_path), trainer=trainer).save("m", iteration=41)
    assert torch.load(tmp_path / "m.pth", weights_only=True)["trainer"]["iteration"] == 41
    model2 = SimpleModel()
    trainer2 = SimpleTrainer(model2, infinite_loader(), torch.optim.SGD(model2.parameters(), 5.0))
    Checkpointer(model2, str(tmp_path), trainer=trainer2).resume_or_load("")
    assert trainer2.iter == 41
    assert trainer2.optimizer.param_groups[0]["lr"] == 0.1


def test_bad_checkpointables_are_refused() -> None:
    with pytest.raises(TypeError, match="checkpointable 'opt' \\(object\\) needs a 'state_dict\\(\\)' method"):
        Checkpointer(Net(), "", opt=object())
    with pytest.raises(ValueError, match="cannot be named 'model'"):
        Checkpointer(Net(), "").add_checkpointable("model", Counter())


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"torch\.nn\.Module, got str"):
        Checkpointer("model")  # type: ignore[arg-type]
    ckpt = Checkpointer(Net(), str(tmp_path), a=Counter())
    with pytest.raises(KeyError, match="Key a already used"):
        ckpt.add_checkpointable("a", Counter())
    with pytest.raises(ValueError, match="without directory, got 'sub/m'"):
        ckpt.save("sub/m")
    ckpt.save("m")
    with pytest.raises(
        ValueError, match=r"checkpointables \['b'\] are not tracked by this checkpointer; known: \['a'\]"
    ):
        ckpt.load(str(tmp_path / "m.pth"), checkpointables=["b"])
    with pytest.raises(FileNotFoundError, match=r"Checkpoint .*nope\.pth not found!"):
        ckpt.load(str(tmp_path / "nope.pth"))
    torch.save({"weights": {}}, tmp_path / "nomodel.pth")
    with pytest.raises(ValueError, match=r"nomodel.pth has no 'model' entry \(it has \['weights'\]\)"):
        ckpt.load(str(tmp_path / "nomodel.pth"))


def test_weights_only_refusal_names_the_file_and_the_switch(tmp_path: Path) -> None:
    torch.save({"model": Net().state_dict(), "obj": Counter(2)}, tmp_path / "obj.pth")
    ckpt = Checkpointer(Net())
    with pytest.raises(
        pickle.UnpicklingError, match=r"obj\.pth holds objects .* set checkpointer\.weights_only = False"
    ):
        ckpt.load(str(tmp_path / "obj.pth"))
    ckpt.weights_only = False
    assert ckpt.load(str(tmp_path / "obj.pth"))["obj"].n == 2


# ---------------------------------------------------------------- DetectionCheckpointer
def test_detection_checkpointer_saves_on_main_process_by_default(tmp_path: Path) -> None:
    ckpt = DetectionCheckpointer(Net(), str(tmp_path))
    assert ckpt.save_to_disk is True  # rank 0 of a single process
    assert DetectionCheckpointer(Net(), str(tmp_path), save_to_disk=False).save_to_disk is False


def test_detection_checkpointer_reads_a_raw_state_dict(tmp_path: Path) -> None:
    torch.save(fill(Net(), 6.0).state_dict(), tmp_path / "raw.pth")
    dst = Net()
    assert DetectionCheckpointer(dst).load(str(tmp_path / "raw.pth")) == {}
    assert torch.equal(dst.fc.weight, torch.full((2, 3), 6.0))


def test_detection_checkpointer_ignores_missing_pixel_mean(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sd = fill(Net(), 1.0).state_dict()
    del sd["pixel_mean"]
    torch.save({"model": sd}, tmp_path / "old.pth")
    with caplog.at_level(logging.WARNING):
        DetectionCheckpointer(Net()).load(str(tmp_path / "old.pth"))
    assert "not found in the checkpoint" not in caplog.text
    with caplog.at_level(logging.WARNING):
        Checkpointer(Net()).load(str(tmp_path / "old.pth"))
    assert "Some model parameters or buffers are not found in the checkpoint:\npixel_mean" in caplog.text


def test_detection_checkpointer_reads_model_zoo_pkl_with_numpy_arrays(tmp_path: Path) -> None:
    weights = {k: v.numpy() for k, v in fill(Net(), 5.0).state_dict().items()}
    with open(tmp_path / "zoo.pkl", "wb") as f:
        pickle.dump({"model": weights, "__author__": "Detectron2 Model Zoo"}, f)
    dst = Net()
    left = DetectionCheckpointer(dst).load(str(tmp_path / "zoo.pkl"))
    assert left == {"__author__": "Detectron2 Model Zoo"}
    assert torch.equal(dst.head.weight, torch.full((1, 2), 5.0))


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("c2.pkl", {"blobs": {"conv1_w": np.zeros(3)}}, "Caffe2/Detectron1 .pkl .* Convert it with detectron2"),
        ("net.pyth", {"model_state": {}}, "pycls .pyth checkpoints need detectron2's name-matching heuristics"),
    ],
)
def test_detection_checkpointer_refuses_formats_needing_matching_heuristics(
    tmp_path: Path, name: str, content: dict, match: str
) -> None:
    with open(tmp_path / name, "wb") as f:
        pickle.dump(content, f)
    with pytest.raises(ValueError, match=match):
        DetectionCheckpointer(Net()).load(str(tmp_path / name))


def test_detection_checkpointer_url_queries(tmp_path: Path) -> None:
    torch.save({"model": Net().state_dict()}, tmp_path / "m.pth")
    with pytest.raises(ValueError, match=r"matching_heuristics .* is not supported by d2lightning"):
        DetectionCheckpointer(Net()).load(f"{tmp_path / 'm.pth'}?matching_heuristics=True")
    with pytest.raises(ValueError, match=re.escape("Unsupported query remaining: {'foo': ['1']}")):
        DetectionCheckpointer(Net()).load(f"{tmp_path / 'm.pth'}?foo=1")
    assert DetectionCheckpointer(Net()).load(f"{tmp_path / 'm.pth'}?matching_heuristics=False") == {}


def test_detection_checkpointer_reads_a_lightning_checkpoint(tmp_path: Path) -> None:
    src = fill(Net(), 8.0)
    sd = {f"model.{k}": v for k, v in src.state_dict().items()}
    torch.save({"state_dict": sd, "pytorch-lightning_version": "2.6.6", "global_step": 12}, tmp_path / "l.ckpt")
    dst = Net()
    assert DetectionCheckpointer(dst).load(str(tmp_path / "l.ckpt")) == {"iteration": 11}
    assert torch.equal(dst.fc.weight, torch.full((2, 3), 8.0))


def test_corrupt_file_error_names_the_file(tmp_path: Path) -> None:
    Checkpointer(Net(), str(tmp_path)).save("m")
    path = tmp_path / "m.pth"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CorruptCheckpointError, match=f"Checkpoint {path} is truncated or corrupt"):
        DetectionCheckpointer(Net()).load(str(path))
    (tmp_path / "z.pkl").write_bytes(b"\x80\x04garbage")
    with pytest.raises(CorruptCheckpointError, match=r"z\.pkl is truncated or corrupt"):
        DetectionCheckpointer(Net()).load(str(tmp_path / "z.pkl"))
