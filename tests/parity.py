"""Numeric parity with the official implementations.

    python tests/parity.py FIXTURE [TINY_CLIP] [--variants] [--quiet]
    python tests/parity.py tests/fixtures/parity/coop.pt

The fixtures ship in ``tests/fixtures/parity/`` (see the README there);
``TINY_CLIP`` defaults to the shipped ``tiny_clip_fp16.pt``.  A CLIP state
dict stored in fp16 is upcast to fp32 before use (:func:`fp32_clip_path`), so
the compact file and the original fp32 one build the same model.

Builds the method named by the fixture's ``meta["method"]`` from the
fixture's own ``meta`` (class names, and the ``TRAINER.<METHOD>`` node of
``meta["trainer_cfg_yaml"]`` merged over our defaults) on the CLIP of
``TINY_CLIP``, loads the fixture's parameters, runs its inputs and compares
every ``out.*``, ``loss.*``, ``grad*.*`` and ``buffer_after_*`` key (and the
integer tensors, exactly) with the per-key tolerances of :func:`tolerance`.
``variant_*`` keys are compared only with ``--variants``.  Prints the
worst error ratio (|a - e| / allowed) per key; exits 0 only if every key
matches.  A fixture key that cannot be mapped is a failure, not a skip.

Each method plugs in through ``tests/parity_adapters/<method>.py``, which
defines ``run(fixture, model, cfg, variants) -> {fixture_key: tensor}``
(helpers in :mod:`parity_adapters.common`).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os.path as osp
import sys
import tempfile

import torch

HERE = osp.dirname(osp.abspath(__file__))
REPO = osp.dirname(HERE)
for path in (REPO, HERE):
    if path not in sys.path:
        sys.path.insert(0, path)

#: the parity fixtures shipped with the repository, and their tiny CLIP (stored in fp16)
FIXTURES = osp.join(HERE, "fixtures", "parity")
DEFAULT_TINY_CLIP = osp.join(FIXTURES, "tiny_clip_fp16.pt")

#: keys that are inputs to the run, not outputs to compare
INPUT_PREFIXES = ("inputs.", "param.", "buffer.",
                  "gpa.snapshots.")  # PromptSRC: the per-epoch prompt values fed to its aggregation
INTEGER_KEYS = ("tokenized_prompts", "eot_index")
#: gradients that are analytically zero (e.g. rho's bias: the text LayerNorms cancel a uniform
#: shift): compare against an absolute bound
ANALYTIC_ZERO = ("layer_mix_rho.bias", "grad_total_train.sim_proj.linear.bias")


def tolerance(key, expected):
    """(atol, rtol) for a fixture key, or None for an exact comparison."""
    base = key.split(".", 1)[1] if key.startswith("variant_") else key  # variant_<name>.<key>
    if base in INTEGER_KEYS or not expected.is_floating_point():
        return None
    scale = expected.abs().max().item() if expected.numel() else 0.0
    if base.startswith("loss."):
        return 1e-6, 1e-5
    if base.startswith("grad"):
        if any(base.endswith(z) or base == z for z in ANALYTIC_ZERO):
            return "zero", 1e-4
        return 1e-4 * scale, 1e-3
    return 5e-5 * scale, 1e-4


def compare(key, actual, expected):
    """Worst ratio of |a - e| to the allowed error (<= 1 passes)."""
    actual = actual.detach().cpu()
    if tuple(actual.shape) != tuple(expected.shape):
        raise ValueError(f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    tol = tolerance(key, expected)
    if tol is None:
        return 0.0 if torch.equal(actual.to(expected.dtype), expected) else float("inf")
    atol, rtol = tol
    if atol == "zero":
        return actual.abs().max().item() / rtol if actual.numel() else 0.0
    diff = (actual.double() - expected.double()).abs()
    allowed = atol + rtol * expected.double().abs()
    allowed = allowed.clamp_min(1e-30)
    return (diff / allowed).max().item() if diff.numel() else 0.0


def upcast_state(state):
    """A copy of a CLIP state dict with its fp16 tensors in fp32 (every other tensor as it is).

    The tiny CLIP's values are all fp16-representable, so this restores the
    published fp32 weights bit for bit."""
    return {k: (v.float() if v.dtype == torch.float16 else v) for k, v in state.items()}


@contextlib.contextmanager
def fp32_clip_path(path):
    """Yields ``path`` itself, or, when it holds a state dict with fp16 tensors, an fp32 copy of it.

    The copy lives in a temporary folder for the duration of the ``with`` block (the
    model, and any second CLIP a method loads from ``MODEL.BACKBONE.PATH``, is built
    inside it), so the loader always reads exactly the fp32 weights."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a plain state dict (a JIT archive): the loader's business
        state = None
    if not (isinstance(state, dict) and any(
        isinstance(v, torch.Tensor) and v.dtype == torch.float16 for v in state.values()
    )):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="parity_clip_") as folder:
        copy = osp.join(folder, osp.splitext(osp.basename(path))[0] + ".upcast_fp32.pt")
        torch.save(upcast_state(state), copy)
        del state
        yield copy


def build_from_meta(fixture, tiny_clip_path):
    """Our model for the fixture's method, config and class names, on the CLIP file
    ``tiny_clip_path`` as the loader reads it (see :func:`fp32_clip_path`)."""
    from yacs.config import CfgNode as CN

    from gopro_prompts.dassl_compat import TRAINER_REGISTRY
    from gopro_prompts.trainers.config import accept_str_or_bool, default_cfg

    meta = fixture["meta"]
    method = meta["method"]
    cfg = default_cfg()
    node_name = meta.get("trainer_cfg_node", method.upper())  # KgCoOp and ProGrad read TRAINER.COOP
    their = CN.load_cfg(meta["trainer_cfg_yaml"])
    if node_name not in cfg.TRAINER:
        raise SystemExit(f"no config node TRAINER.{node_name} for method {method!r}")
    if node_name in their:
        accept_str_or_bool(cfg, {f"TRAINER.{node_name}.{k}": v for k, v in their[node_name].items()})
        cfg.TRAINER[node_name].merge_from_other_cfg(their[node_name])
    if "loss_cfg" in meta:  # ProGrad's top-level LOSS node
        cfg.LOSS.merge_from_other_cfg(CN(dict(meta["loss_cfg"])))
    if "dataset_name" in meta:  # the hand-crafted templates of KgCoOp and ProGrad follow it
        cfg.DATASET.NAME = meta["dataset_name"]
    cfg.MODEL.BACKBONE.NAME = ""
    cfg.MODEL.BACKBONE.PATH = tiny_clip_path
    cfg.TRAINER.NAME = method
    cfg.freeze()
    try:
        trainer_cls = TRAINER_REGISTRY.get(method)
    except KeyError:
        raise SystemExit(f"no trainer registered for method {method!r}: nothing to compare with yet") from None
    clip_model, _ = trainer_cls.load_backbone(cfg, "cpu")
    model = trainer_cls.build_clip_model(cfg, list(meta["classnames"]), clip_model)
    return cfg, model


def load_adapter(method):
    try:
        return importlib.import_module(f"parity_adapters.{method.lower()}")
    except ModuleNotFoundError as exc:
        raise SystemExit(f"no parity adapter for method {method!r} (tests/parity_adapters/{method.lower()}.py): {exc}")


def check(fixture_path, tiny_clip_path=DEFAULT_TINY_CLIP, variants=False, quiet=False):
    """Run the check; returns (ok, rows) with rows = [(key, ratio_or_error)]."""
    torch.set_num_threads(1)  # the fixtures were computed with one thread
    fixture = torch.load(fixture_path, map_location="cpu", weights_only=True)
    meta = fixture["meta"]
    with fp32_clip_path(tiny_clip_path) as fp32_path:
        cfg, model = build_from_meta(fixture, fp32_path)
        adapter = load_adapter(meta["method"])
        computed = adapter.run(fixture, model, cfg, variants)

    rows, ok = [], True
    for key, expected in fixture.items():
        if key in ("meta", "official_name") or key.startswith(INPUT_PREFIXES):
            continue
        if key.startswith("variant_") and not variants:
            continue
        if key not in computed:
            rows.append((key, "NOT MAPPED"))
            ok = False
            continue
        try:
            ratio = compare(key, computed[key], expected)
        except ValueError as exc:
            rows.append((key, f"ERROR {exc}"))
            ok = False
            continue
        rows.append((key, ratio))
        ok = ok and ratio <= 1.0
    if not quiet:
        width = max(len(k) for k, _ in rows)
        print(f"parity: {meta['method']} ({osp.basename(fixture_path)}), {len(rows)} keys")
        for key, ratio in rows:
            verdict = ratio if isinstance(ratio, str) else ("ok  " if ratio <= 1 else "FAIL") + f" worst ratio {ratio:.3g}"
            print(f"  {key:<{width}}  {verdict}")
        print("PASS" if ok else "FAIL")
    return ok, rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("fixture")
    parser.add_argument("tiny_clip", nargs="?", default=DEFAULT_TINY_CLIP,
                        help="the tiny CLIP state dict (default: the shipped %(default)s)")
    parser.add_argument("--variants", action="store_true", help="also compare variant_* keys")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    for path in (args.fixture, args.tiny_clip):
        if not osp.isfile(path):
            print(f"error: file not found: {path}", file=sys.stderr)
            return 2
    ok, _ = check(args.fixture, args.tiny_clip, args.variants, args.quiet)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
