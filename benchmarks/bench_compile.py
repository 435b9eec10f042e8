"""The fast Quiet-STaR step with its per-step model call compiled (torch.compile) against eager, in one run.

The fast step calls the decoder once per thought step (step 0, the N-3 thought steps, the talk steps in one call),
each time on a KV cache one step longer. Modes: ``eager``; ``static`` (torch.compile of the decoder's forward, one
graph per cache length); ``dynamic`` (the same with dynamic shapes). Each mode runs in a fresh process with an
empty inductor cache: the first step's time (a cold compilation included) and the median of the following steps,
next to eager's.
Results: ``benchmarks/results/compile_<tag>.csv`` (Liger's schema; ``time`` = the steady-state step,
``first_step_time`` = the first step).

    .venv/bin/python benchmarks/bench_compile.py                 # tiny model, n = 64, CPU, one thread
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_utils  # noqa: E402
from bench_step import build_model, step_fn  # noqa: E402

from quietstar_fast import QuietStar  # noqa: E402

MODES = ("eager", "static", "dynamic")


def run_mode(mode: str, model_name: str, seq_len: int, repeats: int, device: torch.device) -> dict:
    """One mode in this process: (first step ms, steady-state step ms samples, graph breaks)."""
    model, ids = build_model(model_name, device)
    quiet = QuietStar(model, n_ahead=5, n_ahead_talk=2, **ids).train()
    if mode != "eager":
        decoder = quiet.model.get_decoder()
        decoder.forward = torch.compile(decoder.forward, dynamic=mode == "dynamic")
    step = step_fn(quiet, 1, seq_len, device)
    start = time.perf_counter()
    step()
    first = (time.perf_counter() - start) * 1e3
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        samples.append((time.perf_counter() - start) * 1e3)
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    return dict(first_ms=first, samples=samples, graph_breaks=breaks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "llama1b"], default="tiny")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--tag", default=None)
    parser.add_argument("--one-mode", choices=MODES, default=None, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if args.one_mode:
        print(json.dumps(run_mode(args.one_mode, args.model, args.seq_len, args.repeats, device)))
        return 0
    child = [sys.executable, __file__, "--model", args.model, "--seq-len", str(args.seq_len), "--repeats",
             str(args.repeats), "--threads", str(args.threads), "--device", args.device]
    device_name, version = bench_utils.device_description(device), bench_utils.versions()
    config = f"model={args.model}, batch=1, n={args.seq_len}, N=5, T=2, P=2, threads={args.threads}"
    rows, eager_ms = [], None
    for mode in args.modes:
        with tempfile.TemporaryDirectory() as cache:  # a cold compile: no kernel from an earlier run is reused
            result = subprocess.run(child + ["--one-mode", mode], capture_output=True, text=True, check=True,
                                    env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache})
        measured = json.loads(result.stdout.strip().splitlines()[-1])
        samples = sorted(measured["samples"])
        median = statistics.median(samples)
        eager_ms = median if mode == "eager" else eager_ms
        common = dict(kernel="quietstar_step", provider=f"fast-{mode}", mode="fwd_bwd", x_name="n",
                      x_value=args.seq_len, config=f"{config}, graph_breaks={measured['graph_breaks']}",
                      device_name=device_name, library_version=version)
        rows.append(bench_utils.csv_row(metric="time", unit="ms", values=(median, samples[0], samples[-1]),
                                        **common))
        rows.append(bench_utils.csv_row(metric="first_step_time", unit="ms", values=(measured["first_ms"],) * 3,
                                        **common))
        versus = f", {eager_ms / median:.2f}x eager" if eager_ms else ""
        print(f"{mode:<8} first step {measured['first_ms'] / 1e3:6.1f} s, then {median:8.1f} ms per step{versus} "
              f"({measured['graph_breaks']} graph breaks)", flush=True)
    tag = args.tag or ("cpu" if device.type == "cpu" else torch.cuda.get_device_name(device).replace(" ", "_"))
    path = args.out / f"compile_{tag}.csv"
    bench_utils.write_csv(rows, path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
