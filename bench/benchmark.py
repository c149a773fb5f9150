# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Speed, memory and FLOP benchmark of the Med-SORA image network for the bundle's presets.

Run from the repository root::

    python bench/benchmark.py                       # both presets, default steps for the device
    python bench/benchmark.py --presets cpu --device cuda --output_json bench/results.json

For each preset it times training steps (forward + loss + backward + optimizer step) and inference on random
organ samples of the preset's shape, reports peak memory, counts FLOPs with ``torch.utils.flop_counter`` and
relates the achieved FLOP rate to a matrix-multiply peak measured in the same process and dtype.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import monai
import torch
from monai.bundle import ConfigParser
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_DIR = REPO_ROOT / "bundle"
PRESET_CONFIGS = {
    "cpu": ["configs/train.yaml"],
    "paper": ["configs/train.yaml", "configs/paper.yaml"],
}
# Organ samples per training step: 4 CT cases x 7 organs for the small preset, one case's organs for the paper's.
DEFAULT_BATCH = {"cpu": 28, "paper": 7}
# (steps, warm-up) per preset and device. A paper-preset step on two CPU cores takes minutes and about 19 GiB,
# so there it runs one organ sample for few steps; everything else gets enough steps for stable medians.
DEFAULT_STEPS = {
    ("cpu", "cpu"): (10, 2),
    ("paper", "cpu"): (2, 1),
    ("cpu", "cuda"): (50, 10),
    ("paper", "cuda"): (20, 5),
}
PAPER_CPU_BATCH = 1
GIB = 2.0**30


@dataclass
class Settings:
    """What one preset is run with, after resolving the ``auto`` defaults."""

    preset: str
    device: str
    amp_dtype: str | None
    batch_size: int
    steps: int
    warmup: int


@dataclass
class PresetResult:
    """Everything measured for one preset; serialised as is into the JSON output."""

    settings: Settings
    input_shape: list[int]
    params_m: dict[str, float]
    train_gflop_per_step: float
    infer_gflop_per_sample: float
    train_step_s_median: float
    train_step_s_p90: float
    train_samples_per_s: float
    infer_ms_per_sample_b1: float
    infer_ms_per_sample_bB: float
    peak_mem_train_gib: float
    peak_mem_infer_gib: float
    train_tflops: float
    infer_tflops: float
    train_fraction_of_peak: float
    infer_fraction_of_peak: float
    wall_s: float
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- building the net


def _parser(preset: str, device: torch.device) -> ConfigParser:
    """A fresh parser per build: parsed objects are cached per parser, and the FLOP count needs its own copy."""
    parser = ConfigParser()
    parser.read_config([str(BUNDLE_DIR / name) for name in PRESET_CONFIGS[preset]])
    parser["device"] = f"$torch.device('{device}')"
    return parser


def build(preset: str, device: torch.device) -> tuple[nn.Module, nn.Module, tuple[int, ...], int]:
    """Instantiate ``network_def`` and ``loss`` exactly as the bundle does; return them with the sample shape."""
    parser = _parser(preset, device)
    with torch.device(device):
        network = parser.get_parsed_content("network_def")
    loss = parser.get_parsed_content("loss")
    height, width = parser.get_parsed_content("slice_size")
    shape = (1, height, width, parser.get_parsed_content("num_slices"))
    return network.to(device), loss, shape, parser.get_parsed_content("num_classes")


def parameter_counts(network: nn.Module) -> dict[str, float]:
    """Millions of parameters per component, so the cost of the slice encoder versus the rest is visible."""
    heads = [getattr(network, name) for name in ("head_2d", "head_3d", "head_fusion")]
    parts: dict[str, list[nn.Module | None]] = {
        "encoder_2d": [network.encoder_2d],
        "encoder_3d": [network.encoder_3d],
        "fusion": [network.fusion],
        "heads": heads,
    }
    counts = {
        name: sum(p.numel() for m in modules if m is not None for p in m.parameters()) / 1e6
        for name, modules in parts.items()
    }
    counts["total"] = sum(p.numel() for p in network.parameters()) / 1e6
    return counts


# ------------------------------------------------------------------------------------------------------- FLOPs


def count_flops(preset: str, batch_size: int) -> tuple[float, float, dict[str, float]]:
    """GFLOP of one training step (fwd + loss + bwd) and of one inference sample, with parameter counts.

    Counted on the ``meta`` device: the counter needs only shapes, so the paper preset costs no compute or memory.
    The optimizer update is element-wise and left out, as FLOP counts conventionally do.
    """
    network, loss, shape, num_classes = build(preset, torch.device("meta"))
    x = torch.zeros(batch_size, *shape, device="meta")
    y = torch.zeros(batch_size, dtype=torch.long, device="meta")
    train_counter = FlopCounterMode(display=False)
    with train_counter:
        loss(network(x), y).backward()
    infer_counter = FlopCounterMode(display=False)
    network.eval()
    with infer_counter, torch.no_grad():
        network(x[:1])
    return train_counter.get_total_flops() / 1e9, infer_counter.get_total_flops() / 1e9, parameter_counts(network)


# ------------------------------------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    """CUDA kernels run asynchronously; timings must wait for them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, amp_dtype: str | None) -> contextlib.AbstractContextManager:
    """Mixed precision as the bundle's trainer uses it when ``amp`` is on; a no-op in full precision."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, amp_dtype))


def time_calls(fn: Callable[[], object], device: torch.device, steps: int, warmup: int) -> list[float]:
    """Seconds of each of ``steps`` calls of ``fn`` after ``warmup`` untimed ones (allocator, kernel selection)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile; ``statistics.quantiles`` needs two values and excludes the extremes."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def matmul_peak_tflops(device: torch.device, amp_dtype: str | None, min_seconds: float = 2.0) -> float:
    """Achievable dense FLOP rate of this machine: a large square ``torch.mm`` in the dtype the model runs in.

    This, not the vendor's datasheet figure, is the reference the model's FLOP rate is compared with. The fastest
    call is taken, so that other processes sharing the machine for a moment do not lower the peak.
    """
    size = 8192 if device.type == "cuda" else 4096
    dtype = getattr(torch, amp_dtype) if amp_dtype else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    time_calls(lambda: torch.mm(a, b), device, steps=0, warmup=2)
    times: list[float] = []
    while sum(times) < min_seconds:
        times += time_calls(lambda: torch.mm(a, b), device, steps=1, warmup=0)
    return 2 * size**3 / min(times) / 1e12


# ------------------------------------------------------------------------------------------------------- memory


def release_host_memory() -> None:
    """Return freed heap to the OS, so the resident set measures live memory rather than glibc's free lists."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def current_rss_gib() -> float:
    """Resident set size now (``/proc/self/statm``), the baseline peaks are measured from."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / GIB


def reset_peak_rss() -> bool:
    """Reset the kernel's resident high-water mark (``ru_maxrss``) so each phase gets its own peak.

    Writing 5 to ``/proc/self/clear_refs`` does this on Linux 4.0+; without it ``ru_maxrss`` is the peak since
    the process started, and the caller says so.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@contextlib.contextmanager
def peak_memory(device: torch.device, baseline_gib: float, out: dict[str, float]) -> Iterator[None]:
    """Peak memory of the enclosed phase in GiB, stored in ``out['gib']``.

    CUDA: ``max_memory_allocated`` (tensors only, the caching allocator's reserve excluded). CPU: peak resident
    set size above ``baseline_gib`` (taken before the network was built), since torch's CPU allocations bypass
    ``tracemalloc``; it includes allocator slack and thread stacks, so it is an upper bound on tensor memory.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield
        out["gib"] = torch.cuda.max_memory_allocated(device) / GIB
        return
    release_host_memory()
    out["reset"] = float(reset_peak_rss())
    yield
    out["gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB - baseline_gib


# ------------------------------------------------------------------------------------------------------ presets


def resolve_settings(preset: str, device: torch.device, args: argparse.Namespace) -> Settings:
    """Fill the ``auto`` defaults: the batch, steps and warm-up that suit this preset on this device."""
    steps, warmup = DEFAULT_STEPS[(preset, device.type)]
    default_batch = PAPER_CPU_BATCH if (preset, device.type) == ("paper", "cpu") else DEFAULT_BATCH[preset]
    return Settings(
        preset=preset,
        device=str(device),
        amp_dtype=resolve_amp(device, args.amp),
        batch_size=args.batch_size or default_batch,
        steps=args.steps or steps,
        warmup=warmup if args.warmup is None else args.warmup,
    )


def resolve_amp(device: torch.device, amp: str) -> str | None:
    """AMP dtype: bf16 where supported (no loss scaling needed), else fp16; ``auto`` turns AMP on only on CUDA."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "float16"
    return "bfloat16"


def run_preset(preset: str, device: torch.device, args: argparse.Namespace) -> PresetResult:
    """Measure one preset: FLOPs and parameters, then training steps, then inference (batch 1 and batch B)."""
    wall_start = time.perf_counter()
    cfg = resolve_settings(preset, device, args)
    train_gflop, infer_gflop, params = count_flops(preset, cfg.batch_size)
    peak = args.peak_tflops[cfg.amp_dtype]
    # inference runs batch 1 and, when B > 1, batch B, each for warm-up + timed calls
    infer_gflop_total = (cfg.warmup + cfg.steps) * infer_gflop * (1 + (cfg.batch_size if cfg.batch_size > 1 else 0))
    floor_s = ((cfg.warmup + cfg.steps) * train_gflop + infer_gflop_total) / (peak * 1e3)
    print(
        f"\n[{preset}] batch {cfg.batch_size}, {cfg.warmup} warm-up + {cfg.steps} timed steps, "
        f"{train_gflop:,.0f} GFLOP per training step: at least {floor_s:,.0f} s at the measured matmul peak",
        flush=True,
    )

    release_host_memory()
    baseline_gib = current_rss_gib() if device.type == "cpu" else 0.0
    network, loss_fn, shape, num_classes = build(preset, device)
    x = torch.rand(cfg.batch_size, *shape, device=device)
    y = torch.randint(num_classes, (cfg.batch_size,), device=device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp_dtype == "float16")

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, cfg.amp_dtype):
            loss = loss_fn(network(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    network.train()
    train_mem: dict[str, float] = {}
    with peak_memory(device, baseline_gib, train_mem):
        if cfg.warmup:
            warm_start = time.perf_counter()
            time_calls(train_step, device, steps=0, warmup=cfg.warmup)
            per_step = (time.perf_counter() - warm_start) / cfg.warmup
            to_go = per_step * (cfg.steps + infer_gflop_total / train_gflop)
            print(f"[{preset}] warm-up step {per_step:,.1f} s; about {to_go:,.0f} s to go", flush=True)
        train_times = time_calls(train_step, device, steps=cfg.steps, warmup=0)
    optimizer = scaler = None  # the optimizer state is released before inference is measured
    network.zero_grad(set_to_none=True)

    network.eval()
    infer_mem: dict[str, float] = {}
    with peak_memory(device, baseline_gib, infer_mem), torch.no_grad(), autocast(device, cfg.amp_dtype):
        one_times = time_calls(lambda: network(x[:1]), device, cfg.steps, cfg.warmup)
        batch_times = (
            one_times if cfg.batch_size == 1 else time_calls(lambda: network(x), device, cfg.steps, cfg.warmup)
        )

    step_s = statistics.median(train_times)
    one_s, batch_s = statistics.median(one_times), statistics.median(batch_times) / cfg.batch_size
    notes = []
    if device.type == "cpu" and not (train_mem["reset"] and infer_mem["reset"]):
        notes.append("peak RSS could not be reset between phases: peaks are since the process started")
    if cfg.steps < 5:
        notes.append(f"only {cfg.steps} timed steps: p90 is rough")
    result = PresetResult(
        settings=cfg,
        input_shape=[cfg.batch_size, *shape],
        params_m=params,
        train_gflop_per_step=train_gflop,
        infer_gflop_per_sample=infer_gflop,
        train_step_s_median=step_s,
        train_step_s_p90=percentile(train_times, 0.9),
        train_samples_per_s=cfg.batch_size / step_s,
        infer_ms_per_sample_b1=one_s * 1e3,
        infer_ms_per_sample_bB=batch_s * 1e3,
        peak_mem_train_gib=train_mem["gib"],
        peak_mem_infer_gib=infer_mem["gib"],
        train_tflops=train_gflop / step_s / 1e3,
        infer_tflops=infer_gflop / batch_s / 1e3,
        train_fraction_of_peak=train_gflop / step_s / 1e3 / peak,
        infer_fraction_of_peak=infer_gflop / batch_s / 1e3 / peak,
        wall_s=0.0,
        notes=notes,
    )
    network = x = y = None
    release_host_memory()
    result.wall_s = time.perf_counter() - wall_start
    return result


# ------------------------------------------------------------------------------------------------------- report


def environment(device: torch.device, amp_dtypes: set[str | None], peaks: dict[str | None, float]) -> dict:
    """The facts a reader needs to compare these figures with their own: versions, hardware, threads, dtype."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        cpuinfo = Path("/proc/cpuinfo")
        if cpuinfo.exists():
            models = [
                line.split(":", 1)[1].strip()
                for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")
            ]
            name = f"{models[0]} ({len(models)} logical cores)" if models else name
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "device": str(device),
        "device_name": name,
        "torch_threads": torch.get_num_threads(),
        "dtypes": sorted(dtype_name(d) for d in amp_dtypes),
        "matmul_peak_tflops": {dtype_name(d): round(v, 4) for d, v in peaks.items()},
    }


def dtype_name(amp_dtype: str | None) -> str:
    """How a run's precision is shown: the autocast dtype, or fp32 without AMP."""
    return {None: "float32 (no AMP)", "bfloat16": "bfloat16 AMP", "float16": "float16 AMP + GradScaler"}[amp_dtype]


def format_table(results: list[PresetResult]) -> str:
    """One column per preset, one row per figure: the layout that goes into the docs."""
    mem_label = "peak RSS above baseline" if results[0].settings.device == "cpu" else "peak allocated"
    rows: list[tuple[str, Callable[[PresetResult], str]]] = [
        ("input (B, C, H, W, D)", lambda r: "x".join(map(str, r.input_shape))),
        ("precision", lambda r: dtype_name(r.settings.amp_dtype)),
        ("steps timed (warm-up)", lambda r: f"{r.settings.steps} ({r.settings.warmup})"),
        ("params encoder_2d [M]", lambda r: f"{r.params_m['encoder_2d']:.2f}"),
        ("params encoder_3d [M]", lambda r: f"{r.params_m['encoder_3d']:.2f}"),
        ("params fusion [M]", lambda r: f"{r.params_m['fusion']:.2f}"),
        ("params heads [M]", lambda r: f"{r.params_m['heads']:.2f}"),
        ("params total [M]", lambda r: f"{r.params_m['total']:.2f}"),
        ("train GFLOP / step", lambda r: f"{r.train_gflop_per_step:,.1f}"),
        ("infer GFLOP / sample", lambda r: f"{r.infer_gflop_per_sample:,.1f}"),
        ("train step median [s]", lambda r: f"{r.train_step_s_median:,.3f}"),
        ("train step p90 [s]", lambda r: f"{r.train_step_s_p90:,.3f}"),
        ("train samples / s", lambda r: f"{r.train_samples_per_s:,.2f}"),
        ("infer ms / sample, B=1", lambda r: f"{r.infer_ms_per_sample_b1:,.1f}"),
        ("infer ms / sample, B", lambda r: f"{r.infer_ms_per_sample_bB:,.1f}"),
        (f"train {mem_label} [GiB]", lambda r: f"{r.peak_mem_train_gib:.2f}"),
        (f"infer {mem_label} [GiB]", lambda r: f"{r.peak_mem_infer_gib:.2f}"),
        ("train achieved TFLOP/s", lambda r: f"{r.train_tflops:.3f}"),
        ("train % of matmul peak", lambda r: f"{100 * r.train_fraction_of_peak:.1f}"),
        ("infer achieved TFLOP/s (B)", lambda r: f"{r.infer_tflops:.3f}"),
        ("infer % of matmul peak", lambda r: f"{100 * r.infer_fraction_of_peak:.1f}"),
        ("wall time of preset [s]", lambda r: f"{r.wall_s:,.0f}"),
    ]
    label_width = max(len(label) for label, _ in rows)
    cells = [[fmt(r) for r in results] for _, fmt in rows]
    col_width = max(12, *(len(c) for row in cells for c in row), *(len(r.settings.preset) for r in results))
    lines = [f"{'preset':<{label_width}} | " + " | ".join(f"{r.settings.preset:>{col_width}}" for r in results)]
    lines.append("-" * len(lines[0]))
    lines += [
        f"{label:<{label_width}} | " + " | ".join(f"{c:>{col_width}}" for c in row)
        for (label, _), row in zip(rows, cells)
    ]
    return "\n".join(lines)


def print_report(env: dict, results: list[PresetResult], total_s: float) -> None:
    """Environment first, then the table and any caveats, in a form that can be pasted into the docs."""
    print("\nEnvironment")
    for key, value in env.items():
        print(f"  {key:<20} {value}")
    print()
    print(format_table(results))
    for r in results:
        for note in r.notes:
            print(f"  note [{r.settings.preset}]: {note}")
    if results[0].settings.device == "cpu":
        print("  CPU memory is resident set size (ru_maxrss) above the RSS before the network was built;")
        print("  it includes allocator slack, so it bounds tensor memory from above.")
    print(
        "  FLOPs: torch.utils.flop_counter on fwd + loss + bwd (optimizer update not counted); samples are organ crops."
    )
    print(f"\nTotal benchmark time: {total_s:,.0f} s")


# ---------------------------------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; 0 or omitted batch/steps/warm-up mean the preset's default for the device."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="cpu,paper", help="comma-separated: cpu, paper (default: both)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--amp", default="auto", choices=["auto", "on", "off"], help="auto: bf16/fp16 on CUDA only")
    parser.add_argument(
        "--batch_size", type=int, default=0, help="organ samples per step (default 28 cpu, 7 paper; 1 for paper on CPU)"
    )
    parser.add_argument("--steps", type=int, default=0, help="timed steps (default per preset and device)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed warm-up steps (default per preset and device)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--output_json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    args.presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    unknown = set(args.presets) - set(PRESET_CONFIGS)
    if unknown:
        parser.error(f"unknown preset(s) {sorted(unknown)}; choose from {sorted(PRESET_CONFIGS)}")
    return args


def main(argv: list[str] | None = None) -> list[PresetResult]:
    """Measure the matmul peak once per dtype, then each preset, then print and optionally save the results."""
    start = time.perf_counter()
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    amp_dtypes = {resolve_amp(device, args.amp)}
    args.peak_tflops = {dtype: matmul_peak_tflops(device, dtype) for dtype in amp_dtypes}
    env = environment(device, amp_dtypes, args.peak_tflops)
    print(
        f"torch {env['torch']}, monai {env['monai']}, {env['device_name']}, {env['torch_threads']} threads, "
        f"matmul peak {env['matmul_peak_tflops']} TFLOP/s",
        flush=True,
    )
    torch.manual_seed(0)
    results = []
    for preset in args.presets:
        results.append(run_preset(preset, device, args))
        # a long run's earlier presets stay readable even if a later one is interrupted
        print(format_table(results[-1:]), flush=True)
    total_s = time.perf_counter() - start
    print_report(env, results, total_s)
    if args.output_json:
        args.output_json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"environment": env, "total_s": total_s, "command": sys.argv, "results": [asdict(r) for r in results]}
        args.output_json.write_text(json.dumps(payload, indent=2))
        print(f"results written to {args.output_json}")
    return results


if __name__ == "__main__":
    main()
