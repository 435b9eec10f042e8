"""Shared benchmark plumbing: timing, peak memory, device description, CSV rows (Liger's schema) and plots.

Timing: on CUDA ``triton.testing.do_bench`` (L2 flushed, CUDA events); on CPU wall-clock repeats. Both report the
median and the 20th/80th percentiles in ms.
Peak memory: on CUDA ``max_memory_allocated``; on CPU the process's peak resident set (VmHWM, reset through
/proc/self/clear_refs) with glibc told to mmap every block >= 64 KiB, so freed memory leaves the resident set at
once. Both count what the measured call allocates beyond the memory live before it.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from quietstar_fast.cuda_ext import cuda_extension_available

CSV_COLUMNS = [
    "kernel_name", "kernel_provider", "kernel_operation_mode", "metric_name", "metric_unit", "x_name", "x_label",
    "x_value", "y_value_50", "y_value_20", "y_value_80", "extra_benchmark_config_str", "gpu_name", "timestamp",
    "library_version",
]
_MMAP_THRESHOLD = "65536"


def ensure_exact_cpu_memory_accounting() -> None:
    """Re-exec once with a fixed glibc mmap threshold so that the resident set follows live allocations."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != _MMAP_THRESHOLD:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = _MMAP_THRESHOLD
        os.execv(sys.executable, [sys.executable] + sys.argv)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def versions() -> str:
    import triton

    import quietstar_fast

    cuda = torch.version.cuda or "none"
    return (f"quietstar_fast {quietstar_fast.__version__}; torch {torch.__version__}; triton {triton.__version__}; "
            f"cuda {cuda}")


def time_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, float, float]:
    """(median, p20, p80) milliseconds of ``fn()``."""
    if device.type == "cuda":
        import triton.testing

        p50, p20, p80 = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
        return p50, p20, p80
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    quantiles = statistics.quantiles(samples, n=10, method="inclusive") if len(samples) > 1 else samples * 9
    return statistics.median(samples), quantiles[1], quantiles[7]


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(field + r":\s+(\d+) kB", status.read()).group(1)) * 1024


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Peak MB allocated by ``fn()`` beyond what was live before it (its result is dropped inside)."""
    fn()  # warm-up: lazy initialisation must not count
    return time_and_peak_once(fn, device)[1]


def cpu_allocator_peak_mb(fn: Callable[[], object]) -> float:
    """Peak MB that PyTorch's CPU allocator hands out during ``fn()`` beyond what was live before it: the profiler's
    allocation and free events summed in time order. This counts what ``torch.cuda.max_memory_allocated`` counts on
    a GPU; the resident set instead counts touched pages (an allocation not yet written is not resident)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((event.start_ns(), event.nbytes()) for event in prof.profiler.kineto_results.events()
                    if event.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20


def time_and_peak_once(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(ms, peak MB beyond what was live before) of one call of ``fn``, for runs too long to repeat; warm up first."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        before = _proc_status_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # resets VmHWM to the current resident set
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed_ms = (time.perf_counter() - start) * 1e3
    if device.type == "cuda":
        return elapsed_ms, (torch.cuda.max_memory_allocated(device) - before) / 2**20
    return elapsed_ms, max(0, _proc_status_bytes("VmHWM") - before) / 2**20


def csv_row(kernel: str, provider: str, mode: str, metric: str, unit: str, x_name: str, x_value, values,
            config: str, device_name: str, library_version: str) -> dict:
    p50, p20, p80 = values
    return dict(
        kernel_name=kernel, kernel_provider=provider, kernel_operation_mode=mode, metric_name=metric,
        metric_unit=unit, x_name=x_name, x_label=x_name, x_value=x_value, y_value_50=f"{p50:.6g}",
        y_value_20=f"{p20:.6g}", y_value_80=f"{p80:.6g}", extra_benchmark_config_str=config, gpu_name=device_name,
        timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        library_version=library_version,
    )


def time_and_memory_rows(timing, peak: float, **common) -> list[dict]:
    """The two rows every measured call gets: time (median, p20, p80 ms) and peak memory (MB)."""
    return [csv_row(metric="time", unit="ms", values=timing, **common),
            csv_row(metric="peak_memory", unit="MB", values=(peak,) * 3, **common)]


def write_csv(rows: list[dict], path: Path, fieldnames: list[str] = CSV_COLUMNS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict], path: Path, title: str) -> bool:
    """One panel per (metric, mode): y against x per provider. Returns False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = sorted({(r["metric_name"], r["kernel_operation_mode"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (metric, mode) in zip(axes[0], panels):
        selected = [r for r in rows if r["metric_name"] == metric and r["kernel_operation_mode"] == mode]
        for provider in sorted({r["kernel_provider"] for r in selected}):
            points = sorted((float(r["x_value"]), float(r["y_value_50"])) for r in selected
                            if r["kernel_provider"] == provider)
            ax.plot(*zip(*points), marker="o", label=provider)
        unit = selected[0]["metric_unit"]
        ax.set(title=f"{metric} ({mode})", xlabel=selected[0]["x_name"], ylabel=unit, xscale="log", yscale="log")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def add_common_args(parser: argparse.ArgumentParser, providers: tuple[str, ...], repeats: int) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--providers", nargs="+", choices=providers, default=list(providers))
    parser.add_argument("--modes", nargs="+", choices=["fwd", "fwd_bwd"], default=["fwd", "fwd_bwd"])
    parser.add_argument("--repeats", type=int, default=repeats, help="timed repeats on CPU (CUDA uses do_bench)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--tag", default=None, help="file name tag (default: cpu / the GPU name)")


def prepare(args: argparse.Namespace, cuda_only: set[str], extension_providers: set[str] = frozenset({"cuda"})
            ) -> tuple[torch.device, list[str], str, str]:
    """Set up the device (CPU: exact memory accounting, thread count); returns (device, runnable providers,
    device description, library versions), printing what was skipped (``extension_providers``: the providers that
    need quietstar_fast._C)."""
    device = torch.device(args.device)
    if device.type == "cpu":
        ensure_exact_cpu_memory_accounting()
        torch.set_num_threads(args.threads)
    skipped = [p for p in args.providers if p in cuda_only and device.type != "cuda"]
    if skipped:
        print(f"note: skipped GPU-only providers on {device.type}: {', '.join(skipped)}")
    for provider in (p for p in args.providers if p in extension_providers and p not in skipped):
        if not cuda_extension_available():
            skipped.append(provider)
            print(f"note: skipped provider {provider}: the extension quietstar_fast._C is not built")
    device_name, version = device_description(device), versions()
    print(f"device: {device_name}\nversions: {version}")
    return device, [p for p in args.providers if p not in skipped], device_name, version


def with_backward(forward: Callable[[], torch.Tensor], leaves) -> Callable[[], object]:
    """forward + backward of sum(output) into ``leaves``."""
    def run():
        return torch.autograd.grad(forward().sum(), leaves)
    return run


def measure(fn: Callable[[], object], device: torch.device, repeats: int, label: str):
    """((median, p20, p80) ms, peak MB), or None when the call runs out of memory."""
    try:
        return time_ms(fn, device, repeats), peak_memory_mb(fn, device)
    except torch.OutOfMemoryError:
        print(f"{label}: out of memory")
        return None


def measure_modes(forward: Callable[[], torch.Tensor], leaves, modes, device: torch.device, repeats: int,
                  label: str, **common):
    """Measures ``forward`` alone ("fwd") and with its backward into ``leaves`` ("fwd_bwd"), for each mode asked.
    Yields (mode, timing, peak MB, CSV fields: ``common`` plus the mode); a mode that runs out of memory is skipped."""
    for mode in modes:
        fn = forward if mode == "fwd" else with_backward(forward, leaves)
        measured = measure(fn, device, repeats, f"{label} {mode}")
        if measured is not None:
            (p50, _, _), peak = measured
            print(f"{label} {mode}: {p50:.4g} ms, {peak:.1f} MB", flush=True)
            yield mode, *measured, {**common, "mode": mode}


def results_path(args: argparse.Namespace, device: torch.device, stem: str) -> Path:
    tag = args.tag or ("cpu" if device.type == "cpu" else torch.cuda.get_device_name(device).replace(" ", "_"))
    return args.out / f"{stem}_{tag}.csv"


def write_results(rows: list[dict], csv_path: Path, title: str) -> None:
    """The CSV (also written after each measurement by the benchmarks, so that a run stopped by a time limit keeps
    what it measured) and its plot."""
    write_csv(rows, csv_path)
    print(f"wrote {csv_path}")
    png_path = csv_path.with_suffix(".png")
    scalars = ("tflops", "max_seq_len", "max_seq_len_predicted")
    plotted = plot([r for r in rows if r["metric_name"] not in scalars], png_path, title)
    print(f"wrote {png_path}" if plotted else "matplotlib not installed: no plot")
