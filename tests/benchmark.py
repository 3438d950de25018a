"""Benchmark: our optimised trainers against the official way of computing.

    python -m tests.benchmark [--trainers CoOp CoCoOp MaPLe GOPro KgCoOp ...] [--classes N]
                              [--device cpu|cuda] [--json OUT]

Run it from the root of a clone: it imports the package from there and the
reference paths from ``tests/``.

For each trainer it builds the ViT-B/16 CLIP *architecture* with random
weights (no download: the cost does not depend on the weight values), the
trainer's model from its official config (``configs/trainers/...``: batch
size, N_CTX / CTX_INIT, PREC), and runs

* **ours**: the trainer's model as our trainers run it (one batched,
  truncated text-encoder call; evaluation under ``torch.inference_mode`` with
  the image-independent text features encoded once, ``begin_eval``);
* **reference**: :mod:`tests.reference_paths`, the official organisation of
  the same computation (per-image loop, 77-token prompts, text encoded at
  every batch, all three GOPro views at test time, evaluation under no_grad).

Both paths share the weights and inputs.  Per trainer it measures the
training step (forward, backward, optimiser step, at the official batch
size), evaluation per image, the peak memory of a training step, the
largest differences of logits / losses / gradients between the paths, and
the share of our step spent outside the frozen encoders' own arithmetic
(each encoder call of our step is replayed alone on the same inputs).

Each trainer runs in a fresh subprocess.  Peak memory is measured on the
first run of each path after one untimed run of ours (forward + backward of
a training step; one evaluation batch): on CPU the growth of the process's resident set (Linux
``VmHWM``, reset before the run, allocator caches trimmed first); on CUDA
``torch.cuda.max_memory_allocated`` above the memory held before the run.
Times are the best of ``--repeats`` rounds in which the paths alternate (a
busy machine slows both alike); that first run is the warm-up.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: CLIP ViT-B/16 architecture (the sizes clip.model.build_model reads from the
#: released ViT-B/16 state dict)
VIT_B16 = dict(
    embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
    context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8, transformer_layers=12,
)

#: official config of each trainer (batch size, context, PREC)
CONFIGS = {
    "CoOp": "configs/trainers/CoOp/vit_b16_ep50.yaml",
    "CoCoOp": "configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml",
    "MaPLe": "configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml",
    "GOPro": "configs/trainers/GOPro/vit_b16.yaml",
    "KgCoOp": "configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml",
    "ProGrad": "configs/trainers/ProGrad/vit_b16_ep100_ctxv1.yaml",
    "VPT": "configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml",
    "IVLP": "configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml",
    "PromptSRC": "configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml",
}

#: class names of Caltech101 as CoOp uses them (realistic prompt lengths);
#: beyond 100 classes the names repeat with a number appended
CLASSNAMES = (
    "face", "leopard", "motorbike", "accordion", "airplane", "anchor", "ant", "barrel", "bass", "beaver",
    "binocular", "bonsai", "brain", "brontosaurus", "buddha", "butterfly", "camera", "cannon", "car side",
    "ceiling fan", "cellphone", "chair", "chandelier", "cougar body", "cougar face", "crab", "crayfish",
    "crocodile", "crocodile head", "cup", "dalmatian", "dollar bill", "dolphin", "dragonfly",
    "electric guitar", "elephant", "emu", "euphonium", "ewer", "ferry", "flamingo", "flamingo head",
    "garfield", "gerenuk", "gramophone", "grand piano", "hawksbill", "headphone", "hedgehog", "helicopter",
    "ibis", "inline skate", "joshua tree", "kangaroo", "ketch", "lamp", "laptop", "llama", "lobster", "lotus",
    "mandolin", "mayfly", "menorah", "metronome", "minaret", "nautilus", "octopus", "okapi", "pagoda",
    "panda", "pigeon", "pizza", "platypus", "pyramid", "revolver", "rhino", "rooster", "saxophone",
    "schooner", "scissors", "scorpion", "sea horse", "snoopy", "soccer ball", "stapler", "starfish",
    "stegosaurus", "stop sign", "strawberry", "sunflower", "tick", "trilobite", "umbrella", "watch",
    "water lilly", "wheelchair", "wild cat", "windsor chair", "wrench", "yin yang",
)

PATHS = ("ours", "reference")


def classnames(n: int):
    base = len(CLASSNAMES)
    return [CLASSNAMES[i % base] + (f" {i // base}" if i >= base else "") for i in range(n)]


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trainers", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--classes", type=int, default=10, help="number of classes (default 10)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--json", default="", help="write the results to this JSON file")
    parser.add_argument("--batch-size", type=int, default=0,
                        help="training batch (default: the official config's)")
    parser.add_argument("--eval-batch", type=int, default=0,
                        help="evaluation batch (default: 4 on CPU, the official 100 on CUDA)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per measurement (best is kept)")
    parser.add_argument("--warmup", type=int, default=0,
                        help="extra untimed rounds before timing (the comparison run already warms up)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads (default: torch's, one per core); 1 avoids the thread-wake-up "
                             "stalls of a machine whose cores are busy with other jobs")
    parser.add_argument("--no-reference", action="store_true",
                        help="measure our path only (e.g. 500 classes, where the reference cannot fit)")
    parser.add_argument("--prec", default="", help="override PREC (default: the config's; fp32 on CPU)")
    parser.add_argument("--in-process", action="store_true",
                        help="run every trainer in this process (no subprocess; memory less exact)")
    parser.add_argument("--arch", default="ViT-B/16", choices=("ViT-B/16", "tiny"),
                        help="CLIP architecture (tiny: the built-in test architecture, for smoke tests)")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", default="", help=argparse.SUPPRESS)
    return parser


def log(msg):
    sys.stderr.write(f"[benchmark] {msg}\n")
    sys.stderr.flush()


# ----------------------------------------------------------------------------
# measurement helpers
# ----------------------------------------------------------------------------
class MemoryMeter:
    """Peak memory growth over a region: CUDA allocator stats, or Linux VmHWM on CPU."""

    def __init__(self, device):
        import torch

        self.torch = torch
        self.cuda = device.type == "cuda"
        self.base = 0.0

    @staticmethod
    def _status_kb(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
        raise KeyError(field)

    @staticmethod
    def _trim():
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand cached heap back: an honest baseline
        except (OSError, AttributeError):
            pass

    def start(self):
        import gc

        gc.collect()
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()
            self.base = self.torch.cuda.memory_allocated() / 2 ** 20
            return
        self._trim()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the high-water mark to the current RSS
            self.base = self._status_kb("VmRSS") / 1024
        except (OSError, KeyError):  # no Linux /proc: the lifetime peak, an upper bound
            if not getattr(MemoryMeter, "_warned", False):
                log("cannot reset the RSS high-water mark here: CPU peak memory is the process's lifetime peak")
                MemoryMeter._warned = True
            self.base = self._current_rss_mb()

    @staticmethod
    def _current_rss_mb():
        try:
            return MemoryMeter._status_kb("VmRSS") / 1024
        except (OSError, KeyError):
            return 0.0

    def peak_mb(self):
        if self.cuda:
            self.torch.cuda.synchronize()
            return self.torch.cuda.max_memory_allocated() / 2 ** 20 - self.base
        try:
            return self._status_kb("VmHWM") / 1024 - self.base
        except (OSError, KeyError):
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return peak / (2 ** 20 if sys.platform == "darwin" else 1024) - self.base


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_interleaved(fns, device, warmup, repeats):
    """Best wall time of each function over ``repeats`` rounds (one run of each per round).

    Alternating the functions makes a changing machine load hit all of them alike.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    best = {key: float("inf") for key in fns}
    for _ in range(max(1, repeats)):
        for key, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            best[key] = min(best[key], time.perf_counter() - t0)
    return best


class EncoderCalls:
    """Records every call of the frozen encoders during a step, to replay them alone."""

    def __init__(self, modules):
        import torch

        self.torch = torch
        self.calls = []
        self.handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True) for m in modules]

    def _hook(self, module, args, kwargs):
        t = self.torch
        self.calls.append((module, args, kwargs, t.is_grad_enabled(), t.is_inference_mode_enabled()))

    def remove(self):
        for h in self.handles:
            h.remove()

    def replay(self):
        """Run every recorded call again (forward, and the input-gradient backward when it had one)."""
        torch = self.torch

        def prep(x):
            if isinstance(x, torch.Tensor):
                y = x.detach()
                return y.requires_grad_() if (x.requires_grad and y.is_floating_point()) else y
            if isinstance(x, (list, tuple)):
                return type(x)(prep(v) for v in x)
            if isinstance(x, dict):
                return {k: prep(v) for k, v in x.items()}
            return x

        for module, args, kwargs, grad, inference in self.calls:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                out = module(*prep(args), **prep(kwargs))
                out = out[0] if isinstance(out, tuple) else out
                if out.requires_grad:
                    out.backward(torch.ones_like(out))


def _max_abs(a, b):
    return float((a.detach().double() - b.detach().double()).abs().max())


def _scale(t):
    return float(t.detach().double().abs().max())


# ----------------------------------------------------------------------------
# one trainer (runs in its own process)
# ----------------------------------------------------------------------------
def run_trainer(name, opts):
    import torch

    from gopro_prompts import trainers  # noqa: F401  (registers the trainers)
    from gopro_prompts.dassl_compat import TRAINER_REGISTRY, build_optimizer
    from tests.reference_paths import reference_for
    from gopro_prompts.trainers.clip_helpers import BUILTIN_ARCHS, Precision, _clip
    from gopro_prompts.trainers.config import default_cfg, merge_config_file
    from gopro_prompts.trainers.method import freeze_all_but_learnable, training_step

    device = torch.device(opts["device"])
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    cfg = default_cfg()
    merge_config_file(cfg, str(REPO / CONFIGS[name]))
    cfg.TRAINER.NAME = name
    trainer_cls = TRAINER_REGISTRY.get(name)
    node = trainer_cls.node(cfg)
    if opts["prec"]:
        node.PREC = opts["prec"]
    arch = VIT_B16 if opts["arch"] == "ViT-B/16" else BUILTIN_ARCHS[opts["arch"]]
    for key in [k for k in node if k.startswith("PROMPT_DEPTH")]:  # a smaller architecture has fewer layers
        node[key] = min(node[key], arch["vision_layers"], arch["transformer_layers"])
    batch = opts["batch_size"] or cfg.DATALOADER.TRAIN_X.BATCH_SIZE
    eval_batch = opts["eval_batch"] or (cfg.DATALOADER.TEST.BATCH_SIZE if device.type == "cuda" else 4)
    names = classnames(opts["classes"])

    log(f"{name}: building {opts['arch']} (random weights), {len(names)} classes, batch {batch}, device {device}")
    clip = _clip()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        clip_model = clip.model.CLIP(**arch).float().eval()
    for p in clip_model.parameters():
        p.requires_grad_(False)
    precision = Precision(node.PREC, device)
    clip_model = precision.apply(clip_model)
    torch.manual_seed(1)
    model = trainer_cls.build_clip_model(cfg, names, clip_model)
    learnable = freeze_all_but_learnable(model)
    model.to(device)
    reference = reference_for(name, model, clip_model)
    optim = build_optimizer(learnable, cfg.OPTIM)
    scaler = precision.grad_scaler()

    gen = torch.Generator().manual_seed(2)
    size = arch["image_resolution"]

    def images(n):
        return torch.randn(n, 3, size, size, generator=gen).to(device)

    n_views = 3 if name == "GOPro" else 1
    train_views = [images(batch) for _ in range(n_views)]
    train_inputs = train_views if n_views > 1 else train_views[0]
    labels = torch.randint(0, len(names), (batch,), generator=gen).to(device)
    eval_views = [images(eval_batch) for _ in range(n_views)]

    loss_of = model.total_loss

    train_forwards = {"ours": model.forward_train, "reference": reference.train_forward}

    def forward_train(path):
        with precision.autocast():
            return train_forwards[path](train_inputs, labels)

    def train_step(path):  # the trainer's step (trainers/method.py), on our forward or the reference one
        learnable.train()
        training_step(model, train_inputs, labels, optim, precision, scaler, forward=train_forwards[path])

    def eval_batch_fn(path):
        learnable.eval()
        with precision.autocast():
            if path == "ours":
                with torch.inference_mode():
                    return model(eval_views[0])
            return reference.eval_forward(eval_views[0], eval_views[1:])

    # ---- equality of the two paths (before any optimiser step)
    log(f"{name}: comparing the two paths")
    out = {"trainer": name, "classes": len(names), "batch_size": batch, "eval_batch": eval_batch,
           "prec": node.PREC, **_text_lengths(learnable)}
    paths = ("ours",) if opts["no_reference"] else PATHS
    begin = getattr(model, "begin_eval", None)
    end = getattr(model, "end_eval", None)
    meter = MemoryMeter(device)
    check, res = {}, {path: {} for path in paths}
    # one untimed run of our (cheap) path first: one-time allocations (thread pools, kernel caches)
    # then count against no measured run
    learnable.train()
    loss_of(forward_train("ours")[1]).backward()
    optim.zero_grad()
    if begin is not None:
        with torch.inference_mode():
            begin()
    eval_batch_fn("ours")
    if end is not None:
        end()
    for path in paths:  # the first run of each path: outputs to compare, and its peak memory
        learnable.train()
        optim.zero_grad()
        meter.start()
        logits, terms = forward_train(path)
        loss_of(terms).backward()
        res[path]["peak_mem_mb"] = meter.peak_mb()
        grads = {k: p.grad.detach().clone() for k, p in learnable.named_parameters() if p.grad is not None}
        optim.zero_grad()
        if path == "ours" and begin is not None:
            with torch.inference_mode():
                begin()  # once per evaluation (amortised over the whole test set)
        meter.start()
        eval_logits = eval_batch_fn(path)
        res[path]["eval_peak_mem_mb"] = meter.peak_mb()
        if path == "ours" and end is not None:
            end()
        check[path] = (logits.detach().clone(), {k: t.detach().clone() for k, t in terms.items()},
                       loss_of(terms).detach(), grads, eval_logits.clone())
        del logits, terms, grads, eval_logits
    if not opts["no_reference"]:
        out.update(_differences(check["ours"], check["reference"]))
    del check

    # ---- timings: the paths alternate, so that both see the same machine load
    log(f"{name}: timing ({'/'.join(paths)}, {opts['repeats']} runs each)")
    calls = EncoderCalls([model.image_encoder, model.text_encoder])
    train_step("ours")  # records our encoder calls, to replay them alone
    calls.remove()
    train = timed_interleaved({**{p: (lambda p=p: train_step(p)) for p in paths}, "encoders": calls.replay},
                              device, opts["warmup"], opts["repeats"])
    learnable.eval()
    if begin is not None:
        with torch.inference_mode():
            begin()
    calls = EncoderCalls([model.image_encoder, model.text_encoder])
    eval_batch_fn("ours")
    calls.remove()
    evals = timed_interleaved({**{p: (lambda p=p: eval_batch_fn(p)) for p in paths}, "encoders": calls.replay},
                              device, opts["warmup"], opts["repeats"])
    if end is not None:
        end()
    del calls
    for path in paths:
        res[path]["train_s_per_step"] = train[path]
        res[path]["eval_s_per_img"] = evals[path] / eval_batch
    res["ours"]["outside_encoders_train"] = max(0.0, 1.0 - train["encoders"] / train["ours"])
    res["ours"]["outside_encoders_eval"] = max(0.0, 1.0 - evals["encoders"] / evals["ours"])
    out.update(res)
    if not opts["no_reference"]:
        out["speedup_train"] = out["reference"]["train_s_per_step"] / out["ours"]["train_s_per_step"]
        out["speedup_eval"] = out["reference"]["eval_s_per_img"] / out["ours"]["eval_s_per_img"]
        out["memory_ratio"] = out["ours"]["peak_mem_mb"] / max(out["reference"]["peak_mem_mb"], 1e-9)
    return out


def _text_lengths(learnable):
    """The truncated text sequence our encoder runs and the full context (0 / 0: no text is encoded)."""
    if getattr(learnable, "token_suffix", None) is None:
        return {"seq_len": 0, "context_length": 0}
    return {"seq_len": int(learnable.token_suffix.shape[1] + 1 + learnable.n_ctx),
            "context_length": int(learnable.tokenized_prompts.shape[1])}


def _differences(ours, ref):
    """Largest absolute / relative differences of logits, losses and gradients between the paths."""
    (lo, to, so, go, eo), (lr, tr, sr, gr, er) = ours, ref
    losses = {k: _max_abs(to[k], tr[k]) for k in tr}
    losses["total"] = _max_abs(so, sr)
    grad_diff = max(_max_abs(go[k], gr[k]) for k in gr)
    grad_scale = max(_scale(g) for g in gr.values())
    return {
        "max_abs_diff": {"logits": _max_abs(lo, lr), "eval_logits": _max_abs(eo, er), "losses": losses,
                         "loss": max(losses.values()), "grads": grad_diff},
        "max_rel_diff": {
            "logits": _max_abs(lo, lr) / max(_scale(lr), 1e-12),
            "eval_logits": _max_abs(eo, er) / max(_scale(er), 1e-12),
            "loss": max(_max_abs(to[k], tr[k]) / max(_scale(tr[k]), 1e-12) for k in tr),
            "grads": grad_diff / max(grad_scale, 1e-12),
        },
    }


# ----------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------
def _worker_main(args):
    opts = json.loads(args.worker)
    result = run_trainer(opts["trainer"], opts)
    Path(args.worker_out).write_text(json.dumps(result))


def _opts(args, trainer):
    return {"trainer": trainer, "classes": args.classes, "device": args.device, "batch_size": args.batch_size,
            "eval_batch": args.eval_batch, "repeats": args.repeats, "warmup": args.warmup,
            "no_reference": args.no_reference, "prec": args.prec, "arch": args.arch, "threads": args.threads}


def run_in_subprocess(args, trainer):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "tests.benchmark", "--worker", json.dumps(_opts(args, trainer)),
               "--worker-out", str(out)]
        proc = subprocess.run(cmd, cwd=str(REPO))
        if proc.returncode != 0 or not out.is_file():
            raise SystemExit(f"benchmark of {trainer} failed (exit code {proc.returncode}); see the messages above")
        return json.loads(out.read_text())


def _fmt(x, digits=3):
    return "-" if x is None else f"{x:.{digits}g}"


def table(results, reference=True):
    from tabulate import tabulate

    rows = []
    for r in results:
        o, ref = r["ours"], r.get("reference", {})
        d = r.get("max_abs_diff", {})
        row = [r["trainer"], r["classes"], r["batch_size"], f"{r['seq_len']}/{r['context_length']}",
               _fmt(o["train_s_per_step"]), _fmt(ref.get("train_s_per_step")), _fmt(r.get("speedup_train"), 2),
               _fmt(o["eval_s_per_img"]), _fmt(ref.get("eval_s_per_img")), _fmt(r.get("speedup_eval"), 2),
               f"{o['peak_mem_mb']:.0f}", "-" if not ref else f"{ref['peak_mem_mb']:.0f}",
               _fmt(r.get("memory_ratio"), 2),
               _fmt(d.get("logits"), 2), _fmt(d.get("loss"), 2),
               f"{100 * o['outside_encoders_train']:.0f}% / {100 * o['outside_encoders_eval']:.0f}%"]
        rows.append(row)
    headers = ["trainer", "classes", "batch", "tokens", "train s/step ours", "ref", "speed-up",
               "eval s/img ours", "ref", "speed-up", "peak MB ours", "ref", "ours/ref",
               "max|Δlogits|", "max|Δloss|", "outside encoders (train/eval)"]
    return tabulate(rows, headers=headers, tablefmt="github")


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.worker:
        return _worker_main(args)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA device is available: use --device cpu")
    if args.classes < 1:
        raise SystemExit(f"--classes must be >= 1 (got {args.classes})")
    t0 = time.time()
    results = []
    for trainer in args.trainers:
        results.append(run_trainer(trainer, _opts(args, trainer)) if args.in_process
                       else run_in_subprocess(args, trainer))
    env = {"device": args.device, "device_name": _device_name(args.device), "torch": torch.__version__,
           "threads": args.threads or torch.get_num_threads(), "classes": args.classes, "repeats": args.repeats,
           "warmup": args.warmup, "architecture": f"{args.arch} (random weights)", "wall_s": time.time() - t0}
    print(f"Benchmark on {env['device_name']} (torch {env['torch']}, {env['threads']} thread(s)), "
          f"{args.arch} random weights, {args.classes} classes; times are the best of {args.repeats}")
    print(table(results, reference=not args.no_reference))
    if args.json:
        payload = {"environment": env, "trainers": {r["trainer"]: r for r in results}}
        Path(args.json).write_text(json.dumps(payload, indent=2))
        print(f"Wrote {args.json}")
    return results


def _device_name(device):
    import platform

    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU {name} x{os.cpu_count()}"


if __name__ == "__main__":
    main()
