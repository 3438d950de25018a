"""``train.py --plugin MODULE_OR_FILE``: a trainer from another code base runs in our harness.

The plugins are written by the tests: a linear classifier on raw pixels (a
``TrainerX`` subclass) on the embedded offline dataset.  It trains, is
evaluated, gets a ``results.json`` like our trainers, and the results tools
read it; its ``extend_cfg`` runs after our defaults and before the config files
and opts.  Bad plugins end with one ``error:`` line and exit code 2.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import last_accuracy
from gopro_prompts import cli_plugins, dassl_compat, train

REPO = Path(__file__).resolve().parents[1]

#: the trainer of the plugin below; ``{imports}`` picks where its Dassl names come from
PLUGIN = textwrap.dedent('''
    """A foreign Dassl trainer: a linear classifier on raw pixels."""
    import os

    import torch
    from torch.nn import functional as F
    from yacs.config import CfgNode as CN

    {imports}
    from gopro_prompts.dassl_compat import build_lr_scheduler, build_optimizer, compute_accuracy, load_checkpoint

    #: what extend_cfg saw (read back by the test)
    SEEN = {{}}


    def extend_cfg(cfg):
        SEEN.update(our_defaults="GOPRO" in cfg.TRAINER, lr=cfg.OPTIM.LR, max_epoch=cfg.OPTIM.MAX_EPOCH,
                    dataset=cfg.DATASET.NAME)
        cfg.TRAINER.{node} = CN()
        cfg.TRAINER.{node}.INIT_SCALE = 1.0
        cfg.TRAINER.{node}.TAG = ""


    @TRAINER_REGISTRY.register()
    class {name}(TrainerX):
        def build_model(self):
            height, width = self.cfg.INPUT.SIZE
            self.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * height * width, self.num_classes))
            with torch.no_grad():
                self.model[1].weight.mul_(self.cfg.TRAINER.{node}.INIT_SCALE)
            self.model.to(self.device)
            self.optim = build_optimizer(self.model, self.cfg.OPTIM)
            self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
            self.register_model("linear", self.model, self.optim, self.sched)

        def load_model(self, directory, epoch=None):
            # as CoOp-family trainers do: Dassl 0.6.3's own load_model formats the val_result=None of
            # every model.pth.tar-N checkpoint with .1f and raises TypeError
            for name in self.get_model_names():
                path = os.path.join(directory, name, f"model.pth.tar-{{epoch}}")
                print(f"Loading weights to {{name}} from {{path}}")
                self._models[name].load_state_dict(load_checkpoint(path)["state_dict"])

        def forward_backward(self, batch):
            image, label, _ = self.parse_batch_train(batch)
            output = self.model(image)
            loss = F.cross_entropy(output, label)
            self.model_backward_and_update(loss)
            if (self.batch_idx + 1) == self.num_batches:
                self.update_lr()
            return {{"loss": loss.item(), "acc": compute_accuracy(output, label)[0].item()}}
''')
COMPAT_IMPORTS = "from gopro_prompts.dassl_compat import TRAINER_REGISTRY, TrainerX"
REAL_IMPORTS = "from dassl.engine import TRAINER_REGISTRY, TrainerX"
FAST = ["OPTIM.MAX_EPOCH", "1", "OPTIM.LR", "0.01", "DATASET.NUM_SHOTS", "2"]


def write_plugin(folder, name="LinearProbe", node="LINPROBE", imports=COMPAT_IMPORTS, file="linear_probe.py"):
    path = folder / file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PLUGIN.format(imports=imports, name=name, node=node))
    return path


def plugin_module(path):
    return sys.modules[cli_plugins.file_module_name(os.path.abspath(str(path)))]


@pytest.fixture(autouse=True)
def _forget_plugins():
    """The registries and sys.modules are process-global: drop what this test's plugins added."""
    before_modules = set(sys.modules)
    yield

    def from_a_plugin(cls):
        module = getattr(cls, "__module__", "")
        return module.startswith(cli_plugins.FILE_MODULE_PREFIX) or module.split(".")[0] == "labplug"

    real = sys.modules.get("dassl.engine")  # a plugin may have imported real Dassl itself
    for registry in {id(r): r for r in (dassl_compat.TRAINER_REGISTRY, getattr(real, "TRAINER_REGISTRY", None))
                     if r is not None}.values():
        for name in [n for n, cls in registry._obj_map.items() if from_a_plugin(cls)]:
            registry._obj_map.pop(name)
    for name in set(sys.modules) - before_modules:
        if name.startswith(cli_plugins.FILE_MODULE_PREFIX) or name.split(".")[0] == "labplug":
            sys.modules.pop(name)


def _run_ok(capfd, argv):
    code = train.cli(argv)
    captured = capfd.readouterr()
    assert code == 0, captured.err[-3000:]
    return captured.out


def test_a_plugin_trainer_trains_and_gets_results_json(tmp_path, synthetic_root, capfd, monkeypatch):
    """File plugin + dotted-name plugin (repeatable); extend_cfg before the files and opts; results.json."""
    plugin = write_plugin(tmp_path / "plugins")
    (tmp_path / "labplug").mkdir()
    (tmp_path / "labplug" / "__init__.py").write_text("")
    (tmp_path / "labplug" / "extra.py").write_text(textwrap.dedent('''
        ORDER = []


        def extend_cfg(cfg):
            ORDER.append(("extra", "LINPROBE" in cfg.TRAINER))
            cfg.TRAINER.LINPROBE.TAG = "set-by-extra"
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    method_yaml = tmp_path / "linear_probe.yaml"
    method_yaml.write_text("TRAINER:\n  LINPROBE:\n    INIT_SCALE: 0.5\nOPTIM:\n  NAME: sgd\n")
    out = tmp_path / "runs" / "train"
    # a method YAML needs a dataset config (the embedded default refuses --config-file): the generated one
    data = ["--root", synthetic_root, "--dataset-config-file", str(REPO / "configs/datasets/synthetic_shapes.yaml")]
    small = ["INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0"]
    stdout = _run_ok(capfd, ["--trainer", "LinearProbe", "--output-dir", str(out), *data,
                             "--plugin", str(plugin), "--plugin", "labplug.extra", "--config-file", str(method_yaml),
                             *FAST, *small, "TRAINER.LINPROBE.INIT_SCALE", "0.25"])
    log = (out / "log.txt").read_text()
    assert "Loading trainer: LinearProbe" in log and "Finish training" in log
    assert "* accuracy:" in stdout
    accuracy = last_accuracy(log)
    assert (out / "linear" / "model.pth.tar-1").is_file()

    seen = plugin_module(plugin).SEEN
    # after our defaults (GOPro's node is there), before the method YAML and the opts (Dassl's defaults)
    assert seen["our_defaults"] and seen["dataset"] == ""
    default = dassl_compat.get_cfg_default()
    assert seen["lr"] == default.OPTIM.LR != 0.01 and seen["max_epoch"] == default.OPTIM.MAX_EPOCH != 1
    # in the order given: the dotted-name plugin saw the file plugin's node (on every config built)
    order = sys.modules["labplug.extra"].ORDER
    assert order and set(order) == {("extra", True)}
    assert "INIT_SCALE: 0.25" in log and "TAG: set-by-extra" in log  # the opt won over the YAML

    record = json.loads((out / "results.json").read_text())
    assert record["trainer"] == "LinearProbe" and record["dataset"] == "SyntheticShapes"
    assert record["epoch"] == 1 and not record["eval_only"] and record["shots"] == 2
    assert record["config"] == "linear_probe" and record["backend"] == dassl_compat.BACKEND
    assert f"{record['metrics']['accuracy']:.1f}" == f"{accuracy:.1f}"
    assert set(record["metrics"]) >= {"accuracy", "error_rate", "macro_f1"}

    # --eval-only of the same trainer: its own load_model, a results.json that says so
    out_eval = tmp_path / "eval"
    stdout = _run_ok(capfd, ["--trainer", "LinearProbe", "--output-dir", str(out_eval), *data,
                             "--plugin", str(plugin), "--plugin", "labplug.extra", "--eval-only",
                             "--model-dir", str(out), "--load-epoch", "1", *FAST, *small])
    assert "* accuracy:" in stdout and f"Loading weights to linear from {out}" in stdout
    record = json.loads((out_eval / "results.json").read_text())
    assert record["trainer"] == "LinearProbe" and record["eval_only"] and record["load_epoch"] == 1
    assert f"{record['metrics']['accuracy']:.1f}" == f"{accuracy:.1f}"

    # the results tools read it
    from gopro_prompts.results import tables as results_tables
    from gopro_prompts.results.runs import read_run

    run = read_run(str(out))
    assert run.ok and run.source.endswith("results.json") and run.info["trainer"] == "LinearProbe"
    assert results_tables.main(["xd", str(tmp_path / "runs"), "--source", "SyntheticShapes", "--format", "json"]) == 0
    table = json.loads(capfd.readouterr().out)
    (row,) = table["rows"]
    assert row["method"] == "LinearProbe"
    assert row["cells"]["SyntheticShapes"]["mean"] == pytest.approx(record["metrics"]["accuracy"])


def test_a_plugin_that_imports_real_dassl_directly(tmp_path, synthetic_root, capfd):
    """``from dassl.engine import ...``: runs on real Dassl; elsewhere one line that says why not."""
    plugin = write_plugin(tmp_path, name="RealDasslProbe", node="REALPROBE", imports=REAL_IMPORTS)
    argv = ["--trainer", "RealDasslProbe", "--output-dir", str(tmp_path / "out"),
            "--plugin", str(plugin), *FAST]
    if dassl_compat.BACKEND == "dassl":
        stdout = _run_ok(capfd, argv)
        assert "* accuracy:" in stdout
        record = json.loads((tmp_path / "out" / "results.json").read_text())
        assert record["trainer"] == "RealDasslProbe" and record["backend"] == "dassl"
        return
    code = train.cli(argv)
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ")
    if importlib.util.find_spec("dassl") is None:
        assert "No module named 'dassl'" in err[-1] and "gopro_prompts.dassl_compat" in err[-1]
    else:  # real Dassl importable, bundled engine chosen: the trainer went into the other registry
        assert "unknown trainer 'RealDasslProbe'" in err[-1] and "DASSL_BACKEND=dassl" in err[-1]


def _cli_error(capfd, argv):
    code = train.cli(argv)
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len([line for line in err if line.startswith("error:")]) == 1 and err[-1].startswith("error: ")
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def test_bad_plugins_give_one_line(tmp_path, synthetic_root, capfd):
    base = ["--trainer", "CoOp", "--output-dir", str(tmp_path / "o"), *FAST]

    # (flags go before the KEY VALUE opts)
    msg = _cli_error(capfd, ["--plugin", str(tmp_path / "nope.py"), *base])
    assert f"--plugin {tmp_path / 'nope.py'}: no such file" in msg
    msg = _cli_error(capfd, ["--plugin", "no_such_lab.trainers", *base])
    assert "--plugin no_such_lab.trainers: no module named 'no_such_lab'" in msg and "PYTHONPATH" in msg

    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('the lab plugin is broken')\n")
    msg = _cli_error(capfd, ["--plugin", str(broken), *base])
    assert f"--plugin {broken}" in msg and "RuntimeError: the lab plugin is broken" in msg

    missing_dep = tmp_path / "needs_dep.py"
    missing_dep.write_text("import lab_only_dependency_xyz\n")
    msg = _cli_error(capfd, ["--plugin", str(missing_dep), *base])
    assert "No module named 'lab_only_dependency_xyz'" in msg and "install what the plugin needs" in msg

    not_callable = tmp_path / "not_callable.py"
    not_callable.write_text("extend_cfg = {'N_CTX': 4}\n")
    msg = _cli_error(capfd, ["--plugin", str(not_callable), *base])
    assert f"--plugin {not_callable}: its extend_cfg is a dict, not a function" in msg

    raising = tmp_path / "raising.py"
    raising.write_text("def extend_cfg(cfg):\n    cfg.TRAINER.COOP.NO_SUCH.KEY = 1\n")
    msg = _cli_error(capfd, ["--plugin", str(raising), *base])
    assert f"--plugin {raising}: its extend_cfg(cfg) failed with AttributeError" in msg

    taken = write_plugin(tmp_path, name="CoOp", node="TAKEN", file="taken.py")
    msg = _cli_error(capfd, ["--plugin", str(taken), *base])
    assert "already registered" in msg and "give the plugin's class another name" in msg
    from gopro_prompts.trainers.coop import CoOp

    assert dassl_compat.TRAINER_REGISTRY.get("CoOp") is CoOp  # ours untouched

    msg = _cli_error(capfd, ["--plugin", "not a module!", *base])
    assert "neither a .py file path nor a dotted module name" in msg


def test_the_same_plugin_twice_is_imported_once(tmp_path):
    plugin = write_plugin(tmp_path)
    first = cli_plugins.load_plugins([str(plugin)])
    again = cli_plugins.load_plugins([str(plugin), str(tmp_path / "." / plugin.name)])
    assert first[0][1] is again[0][1] is again[1][1]
    other = write_plugin(tmp_path / "elsewhere", name="OtherProbe", node="OTHER")  # same file name, other folder
    assert cli_plugins.file_module_name(str(other)) != cli_plugins.file_module_name(str(plugin))
