"""`lemon train-demo` (also `python -m lemon.recipe`): LEMON's compute saving, measured on data
every machine has.

The data is the Python standard library's own source (its top-level ``*.py`` files), read as
bytes (a 256-symbol vocabulary), every tenth file held out for validation. A small GPT-2 is
trained; it is expanded with :func:`lemon.expand` (wider and deeper) and the expanded model is
trained with :mod:`lemon.schedule`; beside it, the same large architecture is trained from
scratch with its usual schedule (linear warm-up, cosine decay), and the baselines a user would
try: the expansion without symmetry-breaking noise (``noise_std=0``), and the expansion trained
with the from-scratch schedule. Validation loss is recorded against training FLOPs (6 x
parameters x tokens per step, the usual estimate; attention's own FLOPs are left out); the small
model's pre-training is reported separately, as the paper does, and added in a second column.
For each run: the FLOPs it needed to reach the from-scratch run's final validation loss, and
the share saved. Everything is seeded: a rerun gives the same numbers on the same machine.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# model sizes: (small, large) GPT-2 shapes; "large" is the small one x2 in width and depth
SIZES = {
    "tiny": (dict(n_embd=32, n_layer=1, n_head=2), dict(n_embd=64, n_layer=2, n_head=4)),
    "default": (dict(n_embd=64, n_layer=2, n_head=4), dict(n_embd=128, n_layer=4, n_head=8)),
    "large": (dict(n_embd=128, n_layer=4, n_head=4), dict(n_embd=256, n_layer=8, n_head=8)),
}


@dataclass
class DemoConfig:
    steps: int = 800  # the large model's from-scratch schedule
    small_steps: int = 800  # the small model's pre-training
    size: str = "default"
    device: str = "cpu"
    seeds: tuple[int, ...] = (0, 1)
    batch: int = 16
    context: int = 64
    lr: float = 2e-3  # the peak rate of every run (the from-scratch peak; LEMON keeps it)
    eval_every: int = 50
    eval_batches: int = 16
    out: str = "lemon_train_demo"


@dataclass
class Curve:
    name: str
    steps: list[int] = field(default_factory=list)
    flops: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)


def corpus():
    """(train, validation) bytes of the standard library's top-level modules, as int64 tensors;
    every tenth file (in name order) is held out."""
    import sysconfig

    import torch

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    if len(files) < 20:
        raise RuntimeError(f"found only {len(files)} standard-library modules under {files[0].parent if files else '?'}")
    parts = ([], [])
    for i, path in enumerate(files):
        parts[i % 10 == 0].append(path.read_bytes() + b"\n")
    train, val = (torch.frombuffer(bytearray(b"".join(p)), dtype=torch.uint8).long() for p in parts)
    return train, val


def make_model(shape: dict, context: int, seed: int):
    import torch
    import transformers as T

    torch.manual_seed(seed)
    config = T.GPT2Config(vocab_size=256, n_positions=context, **shape, resid_pdrop=0.0, embd_pdrop=0.0,
                          attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return T.GPT2LMHeadModel(config)


def flops_per_step(model, config: DemoConfig) -> float:
    return 6.0 * sum(p.numel() for p in model.parameters()) * config.batch * config.context


def _windows(data, count: int, context: int, generator):
    import torch

    starts = torch.randint(0, data.numel() - context - 1, (count,), generator=generator)
    return torch.stack([data[s:s + context + 1] for s in starts.tolist()])


def evaluate(model, batches: list, device) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        losses = [model(input_ids=b[:, :-1].to(device), labels=b[:, :-1].to(device)).loss.item() for b in batches]
    model.train()
    return sum(losses) / len(losses)


def cosine(steps: int, warmup: int):
    """The from-scratch schedule: linear warm-up, cosine decay to 0 (a LambdaLR multiplier)."""
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))
    return fn


def train(name: str, model, schedule, steps: int, data, val_batches, config: DemoConfig, seed: int,
          flops_offset: float = 0.0, progress: bool = True) -> Curve:
    import torch
    from tqdm.auto import tqdm

    device = torch.device(config.device)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    per_step = flops_per_step(model, config)
    generator = torch.Generator().manual_seed(seed + 1)  # the same batches for every run of a seed
    curve = Curve(name)

    def record(step: int):
        curve.steps.append(step)
        curve.flops.append(flops_offset + step * per_step)
        curve.loss.append(evaluate(model, val_batches, device))

    record(0)
    for step in tqdm(range(1, steps + 1), desc=f"lemon train-demo: {name}", file=sys.stderr, disable=not progress,
                     mininterval=1.0, leave=False):
        batch = _windows(data, config.batch, config.context, generator).to(device)
        loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if step % config.eval_every == 0 or step == steps:
            record(step)
    return curve


def flops_to_reach(curve: Curve, target: float) -> float | None:
    """FLOPs at the first evaluation whose loss is at most ``target`` (None: never)."""
    return next((f for f, loss in zip(curve.flops, curve.loss) if loss <= target), None)


def run_seed(config: DemoConfig, seed: int, progress: bool = True) -> dict:
    import torch

    import lemon
    from lemon.schedule import lr_lambda, schedule_steps

    small_shape, large_shape = SIZES[config.size]
    train_data, val_data = corpus()
    val_batches = [b for b in _windows(val_data, config.batch * config.eval_batches, config.context,
                                       torch.Generator().manual_seed(1234)).split(config.batch)]
    warmup = max(1, config.steps // 50)

    small = make_model(small_shape, config.context, seed)
    large = make_model(large_shape, config.context, seed)
    small_curve = train("small", small, cosine(config.small_steps, max(1, config.small_steps // 50)),
                        config.small_steps, train_data, val_batches, config, seed, progress=progress)
    small.eval()
    small_flops = small_curve.flops[-1]
    # the architecture of the from-scratch model exactly (GPT-2's FFN is 4 x the width by default)
    targets = dict(hidden_size=large_shape["n_embd"], num_hidden_layers=large_shape["n_layer"],
                   num_attention_heads=large_shape["n_head"], intermediate_size=4 * large_shape["n_embd"])
    lemon_steps = lr_lambda(config.steps)  # the LEMON schedule: 0.6 of the from-scratch length
    short = schedule_steps(config.steps)

    runs = {}
    runs["scratch"] = train("scratch", large, cosine(config.steps, warmup),
                            config.steps, train_data, val_batches, config, seed, progress=progress)
    expanded = lemon.expand(small, seed=seed, progress=False, **targets)
    same = {n: tuple(p.shape) for n, p in expanded.named_parameters()} == {
        n: tuple(p.shape) for n, p in make_model(large_shape, config.context, seed).named_parameters()}
    if not same:
        raise RuntimeError("the expanded model's architecture differs from the from-scratch model's")
    step0 = evaluate(expanded, val_batches, torch.device(config.device))
    runs["lemon"] = train("lemon", expanded, lemon_steps, short, train_data, val_batches, config, seed,
                          progress=progress)
    runs["lemon_noise0"] = train("lemon, noise_std=0", lemon.expand(small, seed=seed, noise_std=0, progress=False,
                                                                    **targets),
                                 lemon_steps, short, train_data, val_batches, config, seed, progress=progress)
    runs["lemon_scratch_schedule"] = train(
        "lemon, from-scratch schedule", lemon.expand(small, seed=seed, progress=False, **targets),
        cosine(config.steps, warmup), config.steps, train_data, val_batches, config, seed, progress=progress)

    target = runs["scratch"].loss[-1]
    scratch_flops = runs["scratch"].flops[-1]
    summary = {}
    for name, curve in runs.items():
        reached = flops_to_reach(curve, target)
        summary[name] = {
            "final_loss": curve.loss[-1], "flops": curve.flops[-1], "flops_to_scratch_loss": reached,
            "saved": None if reached is None else 1 - reached / scratch_flops,
            "saved_with_small": None if reached is None or name == "scratch" else
            1 - (reached + small_flops) / scratch_flops,
        }
    return {"seed": seed, "small_final_loss": small_curve.loss[-1], "expanded_step0_loss": step0,
            "small_flops": small_flops, "target_loss": target, "small": asdict(small_curve),
            "runs": {name: asdict(curve) for name, curve in runs.items()}, "summary": summary}


def table(results: list[dict]) -> str:
    lines = [f"{'run':<30} {'final val loss':>14} {'FLOPs to scratch loss':>22} {'saved':>7} {'saved incl. small':>18}"]
    for name in results[0]["summary"]:
        rows = [r["summary"][name] for r in results]

        def fmt(values, pattern):
            known = [v for v in values if v is not None]
            if len(known) < len(values):
                return "not reached"
            mean = sum(known) / len(known)
            spread = f" ±{(max(known) - min(known)) / 2:{pattern}}" if len(known) > 1 else ""
            return f"{mean:{pattern}}{spread}"

        lines.append(f"{name:<30} {fmt([r['final_loss'] for r in rows], '.4f'):>14} "
                     f"{fmt([r['flops_to_scratch_loss'] for r in rows], '.3g'):>22} "
                     f"{fmt([None if r['saved'] is None else 100 * r['saved'] for r in rows], '.1f'):>7} "
                     f"{fmt([None if r['saved_with_small'] is None else 100 * r['saved_with_small'] for r in rows], '.1f') if name != 'scratch' else '':>18}")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, ax = plt.subplots(figsize=(8, 5))
    colors = {"scratch": "#1f77b4", "lemon": "#d62728", "lemon_noise0": "#ff9896",
              "lemon_scratch_schedule": "#9467bd"}
    first = results[0]
    for name, curve in first["runs"].items():
        ax.plot(curve["flops"], curve["loss"], label=curve["name"], color=colors.get(name))
    ax.plot(first["small"]["flops"], first["small"]["loss"], label="small model (pre-training)", color="#7f7f7f",
            linestyle=":")
    ax.axhline(first["target_loss"], color="#1f77b4", linewidth=0.6, linestyle="--")
    ax.set_xlabel("training FLOPs of the run (6 x params x tokens)")
    ax.set_ylabel("validation loss (nats per byte)")
    ax.set_title(f"lemon train-demo, seed {first['seed']}: expanded vs from scratch")
    ax.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def run_demo(config: DemoConfig, progress: bool = True) -> dict:
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    start = time.perf_counter()
    torch.manual_seed(0)
    results = [run_seed(config, seed, progress=progress) for seed in config.seeds]
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"config": asdict(config), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "wall_s": time.perf_counter() - start, "results": results}
    (out / "train_demo.json").write_text(json.dumps(record, indent=1))
    plotted = plot(results, out / "train_demo.png")
    first = results[0]
    print(f"small model: final val loss {first['small_final_loss']:.4f}; the expanded model at step 0: "
          f"{first['expanded_step0_loss']:.4f} (lossless); from-scratch target {first['target_loss']:.4f}")
    print(table(results))
    print(f"wrote {out / 'train_demo.json'}" + (f" and {out / 'train_demo.png'}" if plotted else "")
          + f" in {record['wall_s']:.0f} s")
    return record


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="lemon train-demo", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_from_args(args)


def add_arguments(parser) -> None:
    defaults = DemoConfig()
    parser.add_argument("--steps", type=int, default=defaults.steps, help="the large model's from-scratch steps")
    parser.add_argument("--small-steps", type=int, default=defaults.small_steps,
                        help="steps of the small model's training, before it is expanded")
    parser.add_argument("--size", choices=sorted(SIZES), default=defaults.size,
                        help="small -> large model: " + "; ".join(
                            f"{name} {s['n_embd']}x{s['n_layer']} -> {b['n_embd']}x{b['n_layer']}"
                            for name, (s, b) in sorted(SIZES.items())) + " (width x layers)")
    parser.add_argument("--device", default=defaults.device, help="where to train, e.g. cpu or cuda")
    parser.add_argument("--seeds", default=",".join(map(str, defaults.seeds)),
                        help="comma-separated seeds (the table gives the mean and the half-range over them)")
    parser.add_argument("--out", default=defaults.out, help="folder for the curves (JSON) and the plot")


def run_from_args(args) -> int:
    seeds = tuple(int(s) for s in str(args.seeds).split(",") if s)
    config = DemoConfig(steps=args.steps, small_steps=args.small_steps, size=args.size, device=args.device,
                        seeds=seeds, out=args.out)
    run_demo(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
