"""bundled_dassl.utils and torch_compat loaders (Dassl's ``dassl/utils/``)."""
from __future__ import annotations

import json
import os
import random
import re
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from torch.optim.lr_scheduler import CosineAnnealingLR

from gopro_prompts.bundled_dassl import torch_compat, utils
from gopro_prompts.bundled_dassl.utils import (
    AverageMeter,
    MetricMeter,
    Registry,
    check_availability,
    check_isfile,
    collect_env_info,
    count_num_param,
    listdir_nohidden,
    load_checkpoint,
    load_pretrained_weights,
    mkdir_if_missing,
    read_image,
    read_json,
    resume_from_checkpoint,
    save_checkpoint,
    set_random_seed,
    setup_logger,
    tolist_if_not,
    write_json,
)

pytestmark = pytest.mark.bundled_only(
    reason="tests gopro_prompts.bundled_dassl.utils and the torch_compat shims (with stand-ins for "
           "real Dassl's functions) directly: the same code on every leg, so the bundled leg runs it")


# ----------------------------------------------------------------------------- meters
def test_metric_meter_string_and_updates():
    meter = MetricMeter()
    meter.update({"loss": torch.tensor(1.2345678), "acc": 50.0})
    meter.update({"loss": 0.5, "acc": torch.tensor(100.0)})
    meter.update(None)
    assert str(meter) == "loss 0.5000 (0.8673) acc 100.0000 (75.0000)"
    assert str(MetricMeter()) == ""
    m2 = MetricMeter(delimiter=" | ")
    m2.update({"a": 1, "b": 2})
    assert str(m2) == "a 1.0000 (1.0000) | b 2.0000 (2.0000)"
    with pytest.raises(TypeError, match=r"^Input to MetricMeter.update\(\) must be a dictionary$"):
        meter.update([1.0])


def test_average_meter_plain_and_ema():
    m = AverageMeter()
    m.update(torch.tensor(2.0), n=3)
    m.update(4.0)
    assert (m.val, m.sum, m.count, m.avg) == (4.0, 10.0, 4, 2.5)
    e = AverageMeter(ema=True)
    e.update(10.0)
    e.update(20.0)
    assert e.avg == pytest.approx(0.9 * 1.0 + 0.1 * 20.0)


# ----------------------------------------------------------------------------- registry
def test_registry_register_get_and_errors():
    reg = Registry("TRAINER")

    @reg.register()
    class CoOp:
        pass

    def MaPLe():
        return None

    assert reg.register(MaPLe) is MaPLe
    reg.register(type("CoCoOp", (), {}))
    assert reg.registered_names() == ["CoOp", "MaPLe", "CoCoOp"]
    assert reg.get("CoOp") is CoOp
    with pytest.raises(KeyError) as exc:
        reg.register(type("CoOp", (), {}))
    assert exc.value.args[0] == 'An object named "CoOp" was already registered in "TRAINER" registry'
    with pytest.raises(KeyError) as exc:
        reg.get("maple")
    assert exc.value.args[0].startswith('Object name "maple" does not exist in "TRAINER" registry')
    assert "did you mean: MaPLe" in exc.value.args[0]
    with pytest.raises(KeyError) as exc:
        reg.get("Coop")
    assert "did you mean: CoOp, CoCoOp?" in exc.value.args[0]
    with pytest.raises(KeyError) as exc:
        reg.get("XYZ")
    assert exc.value.args[0] == 'Object name "XYZ" does not exist in "TRAINER" registry'


def test_check_availability_message_and_ties():
    check_availability("CoOp", ["CoOp", "MaPLe"])
    with pytest.raises(ValueError) as exc:
        check_availability("OxfordPet", ["Food101", "OxfordPets", "OxfordFlowers"])
    assert str(exc.value) == (
        "The requested one is expected to belong to ['Food101', 'OxfordPets', 'OxfordFlowers'], "
        "but got [OxfordPet] (do you mean [OxfordPets]?)"
    )
    # Equal difflib ratios: the later candidate wins.
    with pytest.raises(ValueError, match=r"\(do you mean \[ab\]\?\)$"):
        check_availability("a", ["ba", "ab"])


# ----------------------------------------------------------------------------- logger
@pytest.fixture
def restore_stdout():
    saved = sys.stdout
    yield
    utils._close_active_tee()
    sys.stdout = saved


def test_setup_logger_tees_and_adds_timestamp_suffix(tmp_path, capsys, restore_stdout):
    setup_logger(None)  # no-op
    assert not isinstance(sys.stdout, utils._Tee)
    out_dir = tmp_path / "run"
    setup_logger(str(out_dir))
    print("first run line")
    sys.stdout.flush()
    log = out_dir / "log.txt"
    assert log.read_text() == "first run line\n"
    assert "first run line" in capsys.readouterr().out  # console still gets it

    setup_logger(str(out_dir))  # a re-run in the same directory
    print("second run line")
    sys.stdout.flush()
    assert log.read_text() == "first run line\n"  # the old file is never written again
    stamped = [p for p in os.listdir(out_dir) if p != "log.txt"]
    assert len(stamped) == 1
    assert re.fullmatch(r"log\.txt-\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}", stamped[0])
    assert (out_dir / stamped[0]).read_text() == "second run line\n"

    # A third call in the same second still gets a file of its own.
    setup_logger(str(out_dir))
    print("third")
    sys.stdout.flush()
    assert len(os.listdir(out_dir)) == 3
    assert (out_dir / stamped[0]).read_text() == "second run line\n"


def test_setup_logger_restores_stdout_and_accepts_file_names(tmp_path, restore_stdout):
    real = sys.stdout
    setup_logger(str(tmp_path / "a" / "train.log"))
    tee = sys.stdout
    assert isinstance(tee, utils._Tee) and tee.console is real
    setup_logger(str(tmp_path / "b.txt"))
    assert sys.stdout.console is real  # never a tee of a tee
    assert tee.file is None  # previous file closed
    print("x")
    sys.stdout.flush()
    assert (tmp_path / "b.txt").read_text() == "x\n"
    assert (tmp_path / "a" / "train.log").read_text() == ""


# ----------------------------------------------------------------------------- seed, env
def test_set_random_seed_reproducible():
    def draw():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    set_random_seed(7)
    a = draw()
    set_random_seed(7)
    assert draw() == a


def test_collect_env_info_appends_pillow(monkeypatch):
    import PIL
    import torch.utils.collect_env as ce

    monkeypatch.setattr(ce, "get_pretty_env_info", lambda: "ENV")
    assert collect_env_info() == f"ENV\n        Pillow ({PIL.__version__})"


# ----------------------------------------------------------------------------- checkpoints
def _state(epoch=3):
    sd = OrderedDict([("module.weight", torch.ones(2, 2)), ("bias", torch.zeros(2))])
    return {"state_dict": sd, "epoch": epoch, "optimizer": None, "scheduler": None,
            "val_result": None}


def test_save_checkpoint_atomic_and_pointer(tmp_path, capsys):
    save_dir = tmp_path / "prompt_learner"
    save_checkpoint(_state(3), str(save_dir))
    path = save_dir / "model.pth.tar-3"
    assert capsys.readouterr().out == f"Checkpoint saved to {path}\n"
    assert sorted(os.listdir(save_dir)) == ["checkpoint", "model.pth.tar-3"]  # no temp files
    assert (save_dir / "checkpoint").read_text() == "model.pth.tar-3\n"
    reference = tmp_path / "plain_file"
    reference.write_bytes(b"")
    mode = os.stat(reference).st_mode & 0o777
    assert os.stat(path).st_mode & 0o777 == mode  # usual permissions, not a temp file's 0600
    assert os.stat(save_dir / "checkpoint").st_mode & 0o777 == mode
    loaded = torch.load(path, weights_only=True)
    assert list(loaded["state_dict"]) == ["weight", "bias"]  # "module." stripped
    assert loaded["epoch"] == 3

    save_checkpoint(_state(4), str(save_dir), model_name="model-best.pth.tar")
    assert (save_dir / "checkpoint").read_text() == "model-best.pth.tar\n"

    save_checkpoint(_state(5), str(save_dir), is_best=True, remove_module_from_keys=False)
    out = capsys.readouterr().out
    assert f'Best checkpoint saved to "{save_dir / "model-best.pth.tar"}"' in out
    best = torch.load(save_dir / "model-best.pth.tar", weights_only=True)
    assert best["epoch"] == 5 and "module.weight" in best["state_dict"]
    assert sorted(os.listdir(save_dir)) == [
        "checkpoint", "model-best.pth.tar", "model.pth.tar-3", "model.pth.tar-5"]


def test_save_checkpoint_crash_leaves_previous_file_intact(tmp_path, monkeypatch):
    save_dir = tmp_path / "m"
    save_checkpoint(_state(1), str(save_dir), model_name="model.pth.tar-1")
    before = (save_dir / "model.pth.tar-1").read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(_state(1), str(save_dir), model_name="model.pth.tar-1")
    assert (save_dir / "model.pth.tar-1").read_bytes() == before
    assert sorted(os.listdir(save_dir)) == ["checkpoint", "model.pth.tar-1"]


class _Pickled:
    """A plain Python object: weights_only=True refuses to unpickle it."""

    def __init__(self):
        self.value = 42


def test_load_checkpoint_refuses_pickled_objects_outside_the_allow_list(tmp_path):
    """Deliberate fix: no weights_only=False fallback; the error names the file and the class."""
    from gopro_prompts.bundled_dassl.safe_pickle import UnsafeCheckpointError

    path = tmp_path / "ckpt.pth.tar"
    torch.save({"epoch": 2, "obj": _Pickled(), "w": torch.ones(1)}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(str(path))
    assert str(path) in str(info.value) and "_Pickled" in str(info.value)

    plain = tmp_path / "plain.pth.tar"
    torch.save({"epoch": 1, "w": torch.ones(1)}, plain)
    assert load_checkpoint(str(plain))["epoch"] == 1


def test_load_checkpoint_reads_python2_pickles_as_latin1(tmp_path):
    import pickle as pkl

    from torch.serialization import MAGIC_NUMBER, PROTOCOL_VERSION

    path = tmp_path / "py2.pth"
    with open(path, "wb") as f:  # torch's legacy format, as written by Python 2
        pkl.dump(MAGIC_NUMBER, f, protocol=2)
        pkl.dump(PROTOCOL_VERSION, f, protocol=2)
        pkl.dump({"protocol_version": PROTOCOL_VERSION, "little_endian": True,
                  "type_sizes": {"short": 2, "int": 4, "long": 4}}, f, protocol=2)
        f.write(b"\x80\x02}U\x04nameU\x01\xe9s.")  # {'name': '\xe9'} with a py2 str
        pkl.dump([], f, protocol=2)
    assert load_checkpoint(str(path)) == {"name": "\xe9"}


def test_load_checkpoint_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="^File path is None$"):
        load_checkpoint(None)
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=f'File is not found at "{re.escape(str(missing))}"'):
        load_checkpoint(str(missing))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(Exception):
        load_checkpoint(str(bad))
    assert f'Unable to load checkpoint from "{bad}"' in capsys.readouterr().out


def test_resume_from_checkpoint_prints_and_returns_epoch(tmp_path, capsys):
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = CosineAnnealingLR(opt, 5.0)
    save_checkpoint({"state_dict": model.state_dict(), "epoch": 2, "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict(), "val_result": None}, str(tmp_path / "m"))
    capsys.readouterr()
    model2 = nn.Linear(2, 2)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1)
    epoch = resume_from_checkpoint(str(tmp_path / "m"), model2, opt2, CosineAnnealingLR(opt2, 5.0))
    assert epoch == 2
    assert capsys.readouterr().out == (
        f'Loading checkpoint from "{tmp_path / "m" / "model.pth.tar-2"}"\n'
        "Loaded model weights\nLoaded optimizer\nLoaded scheduler\nPrevious epoch: 2\n"
    )
    torch.testing.assert_close(model2.weight, model.weight)
    # Model only: no optimizer/scheduler lines.
    resume_from_checkpoint(str(tmp_path / "m"), nn.Linear(2, 2))
    assert "Loaded optimizer" not in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        resume_from_checkpoint(str(tmp_path / "empty"), model2)
    (tmp_path / "empty" / "checkpoint").write_text("")
    with pytest.raises(ValueError, match="pointer file .* is empty"):
        resume_from_checkpoint(str(tmp_path / "empty"), model2)


def test_compat_loaders_read_schedulers_as_data_and_resume_uses_given_loader(tmp_path, capsys):
    from gopro_prompts.bundled_dassl.safe_pickle import InertObject

    def real_load_checkpoint(fpath):  # real Dassl's: fails on pickled schedulers on current torch
        raise AssertionError("the real loader must not be used")

    loader = torch_compat.make_load_checkpoint(real_load_checkpoint)
    path = tmp_path / "x.pth"
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    torch.save({"successor": torch.optim.lr_scheduler.StepLR(optimizer, 2)}, path)
    assert isinstance(loader(str(path))["successor"], InertObject)

    model = nn.Linear(2, 2)
    save_checkpoint({"state_dict": model.state_dict(), "epoch": 4, "optimizer": None,
                     "scheduler": None, "val_result": None}, str(tmp_path / "m"))
    seen = []

    def spy(fpath):
        seen.append(fpath)
        return loader(fpath)

    resume = torch_compat.make_resume_from_checkpoint(spy)
    assert resume(str(tmp_path / "m"), nn.Linear(2, 2)) == 4
    assert seen == [str(tmp_path / "m" / "model.pth.tar-4")]
    assert "Previous epoch: 4" in capsys.readouterr().out


def test_load_pretrained_weights(tmp_path, capsys):
    src = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    state = {"module.0.weight": src[0].weight.detach(), "0.bias": src[0].bias.detach(),
             "1.weight": torch.zeros(5, 5), "extra": torch.ones(1)}
    path = tmp_path / "w.pth"
    torch.save({"state_dict": state}, path)
    dst = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    before = dst[1].weight.detach().clone()
    load_pretrained_weights(dst, str(path))
    out = capsys.readouterr().out
    assert f"Successfully loaded pretrained weights from {path}\n" in out
    assert "Layers discarded due to unmatched keys or size: ['1.weight', 'extra']" in out
    torch.testing.assert_close(dst[0].weight, src[0].weight)
    torch.testing.assert_close(dst[1].weight, before)

    torch.save({"nothing": torch.ones(1)}, tmp_path / "n.pth")  # whole object is the state dict
    with pytest.warns(UserWarning, match=r"Cannot load .*n\.pth \(check the key names manually\)"):
        load_pretrained_weights(dst, str(tmp_path / "n.pth"))


# ----------------------------------------------------------------------------- small helpers
def test_json_and_filesystem_helpers(tmp_path):
    target = tmp_path / "deep" / "split.json"
    write_json({"train": [["a.jpg", 0, "dog"]]}, str(target))
    assert target.read_text() == json.dumps(
        {"train": [["a.jpg", 0, "dog"]]}, indent=4, separators=(",", ": "))
    assert read_json(str(target)) == {"train": [["a.jpg", 0, "dog"]]}

    mkdir_if_missing(str(tmp_path / "d"))
    mkdir_if_missing(str(tmp_path / "d"))
    for name in ["b", ".hidden", "a", "c"]:
        (tmp_path / "d" / name).touch()
    assert sorted(listdir_nohidden(str(tmp_path / "d"))) == ["a", "b", "c"]
    assert listdir_nohidden(str(tmp_path / "d"), sort=True) == ["a", "b", "c"]

    assert check_isfile(str(tmp_path / "d" / "a")) is True
    with pytest.warns(UserWarning, match='No file found at ".*missing"'):
        assert check_isfile(str(tmp_path / "missing")) is False

    assert tolist_if_not(3) == [3] and tolist_if_not([3]) == [3] and tolist_if_not((3,)) == [(3,)]
    net = nn.Linear(3, 2)
    assert count_num_param(net) == 8
    assert count_num_param(params=[{"params": [net.weight]}, net.bias]) == 8


def test_read_image_converts_to_rgb(tmp_path):
    Image.new("L", (4, 3), 128).save(tmp_path / "g.png")
    Image.new("RGBA", (2, 2), (10, 20, 30, 0)).save(tmp_path / "a.png")
    Image.new("P", (2, 2)).save(tmp_path / "p.png")
    for name in ["g.png", "a.png", "p.png"]:
        img = read_image(str(tmp_path / name))
        assert img.mode == "RGB"
    assert read_image(str(tmp_path / "g.png")).getpixel((0, 0)) == (128, 128, 128)
    assert read_image(str(tmp_path / "a.png")).getpixel((0, 0)) == (10, 20, 30)
