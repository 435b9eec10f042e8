"""Benchmark thought-aware attention: time and peak memory, forward and forward+backward.

Providers
  official            repeat_kv copies + SDPA with the dense additive mask, as the official code runs it (the mask
                      is built inside the measured call: the official code rebuilds it at every step)
  sdpa_causal_prefix  SDPA causal over the prefix keys alone: the floor, no thought op can beat it
  flex                FlexAttention with a BlockMask of the same mask (CUDA only; compiled)
  torch               quietstar_fast impl="torch" (chunked PyTorch)
  sdpa                quietstar_fast impl="sdpa" (PyTorch's fused kernels for the prefix, merged with the stream part)
  triton              quietstar_fast impl="triton" (CUDA only: the CPU interpreter is for correctness, not speed)
  cuda                quietstar_fast impl="cuda" (the CUDA C++ kernels; needs the built extension quietstar_fast._C)

Defaults: on CPU a small sweep in fp32 on one thread; on CUDA the issue's target shape sweep in bf16.
``--preset cpu-target`` runs the CPU acceptance shapes (B=1, Hq=4, Hkv=2, d=64, fp32; n=1024, a=12 and n=4096, a=4);
``--preset cpu-sweep`` n = 512..4096 at a=4 (the plot: time and memory over n per provider); ``--preset cpu-auto``
the shapes of a Quiet-STaR step on CPU (SmolLM2-135M and the tiny model's heads, n 64, 128 and 256, thought and talk
steps, with and without right padding, fp32, bf16 and fp16) for the torch and sdpa backends, which ``impl="auto"`` picks
between on CPU. ``--preset kernel-target`` the CUDA kernels' target against flash SDPA on the causal prefix (bf16,
d = 128, n = 1024..8192, a = 12; too large for the official provider).
Results: CSV (Liger's schema) and a PNG under benchmarks/results/.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_utils  # noqa: E402

from quietstar_fast import ThoughtMaskLayout, official_step_mask, thought_attention  # noqa: E402
from quietstar_fast.attention.reference import official_sdpa_attention  # noqa: E402

PROVIDERS = ("official", "sdpa_causal_prefix", "flex", "torch", "sdpa", "triton", "cuda")
CUDA_ONLY = {"flex", "triton", "cuda"}
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Shape:
    batch: int
    q_heads: int
    kv_heads: int
    n: int
    a: int
    m: int
    d: int
    dtype: str
    padding: bool

    def live_score_entries(self) -> int:
        """Unmasked (query, key) pairs per (row, head), no padding: causal prefix + r own-stream keys per step."""
        first = self.a + 1 - self.m
        return sum(self.n * (self.n + 1) // 2 + self.n * step for step in range(first, self.a + 1))

    def fwd_flops(self) -> float:
        # FlashAttention convention: 4 * live entries * d per (row, head); backward = 2.5x forward.
        return 4.0 * self.batch * self.q_heads * self.d * self.live_score_entries()


def _inputs(shape: Shape, device: torch.device):
    dtype = _DTYPES[shape.dtype]
    q = torch.randn(shape.batch, shape.q_heads, shape.m * shape.n, shape.d, device=device, dtype=dtype)
    k = torch.randn(shape.batch, shape.kv_heads, (shape.a + 1) * shape.n, shape.d, device=device, dtype=dtype)
    v = torch.randn_like(k)
    mask = None
    if shape.padding:  # right padding of about 10% on every other row, as the official collator pads
        mask = torch.ones(shape.batch, shape.n, dtype=torch.bool, device=device)
        mask[::2, shape.n - shape.n // 10:] = False
    return [t.requires_grad_(True) for t in (q, k, v)], mask


def _official(shape: Shape, q, k, v, mask):
    def run():
        if shape.m == 1:
            allowed = official_step_mask(shape.n, shape.a, mask, dtype=q.dtype, device=q.device) == 0
        else:
            allowed = ThoughtMaskLayout(shape.n, shape.a, shape.m, mask).dense_allowed(q.device)
        additive = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(
            ~allowed, torch.finfo(q.dtype).min)
        return official_sdpa_attention(q, k, v, additive)
    return run


def _sdpa_causal_prefix(shape: Shape, q, k, v, mask):
    # Fold the m query steps into the head axis: head h*m + t reads kv head h // group, as GQA requires.
    def run():
        qf = q.view(shape.batch, shape.q_heads * shape.m, shape.n, shape.d)
        return F.scaled_dot_product_attention(qf, k[:, :, :shape.n], v[:, :, :shape.n], is_causal=True,
                                              enable_gqa=True)
    return run


def _flex(shape: Shape, q, k, v, mask):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    n, first = shape.n, shape.a + 1 - shape.m
    valid = mask if mask is not None else torch.ones(shape.batch, n, dtype=torch.bool, device=q.device)

    def thought_mask(b, h, q_idx, kv_idx):
        step, i = first + q_idx // n, q_idx % n
        s, j = kv_idx // n, kv_idx % n
        prefix = (s == 0) & (j <= i) & valid[b, j]
        stream = (s >= 1) & (s <= step) & (j == i) & valid[b, i]
        return prefix | stream

    block_mask = create_block_mask(thought_mask, shape.batch, None, shape.m * n, (shape.a + 1) * n,
                                   device=q.device, _compile=True)
    compiled = torch.compile(flex_attention, dynamic=False)
    return lambda: compiled(q, k, v, block_mask=block_mask, enable_gqa=True)


def _library(impl: str):
    def factory(shape: Shape, q, k, v, mask):
        return lambda: thought_attention(q, k, v, prefix_len=shape.n, key_padding_mask=mask, impl=impl)
    return factory


_FACTORIES = {
    "official": _official,
    "sdpa_causal_prefix": _sdpa_causal_prefix,
    "flex": _flex,
    "torch": _library("torch"),
    "sdpa": _library("sdpa"),
    "triton": _library("triton"),
    "cuda": _library("cuda"),
}


def _sweep(args) -> list[Shape]:
    if args.preset == "cpu-target":
        return [Shape(1, 4, 2, 1024, 12, 1, 64, "fp32", False), Shape(1, 4, 2, 4096, 4, 1, 64, "fp32", False)]
    if args.preset == "cpu-sweep":
        return [Shape(1, 4, 2, n, 4, 1, 64, "fp32", False) for n in (512, 1024, 2048, 4096)]
    if args.preset == "cpu-auto":
        return [Shape(2, heads, kv_heads, n, a, m, d, dtype, padding)
                for heads, kv_heads, d in ((9, 3, 64), (8, 4, 32)) for n in (64, 128, 256)
                for a, m in ((1, 1), (5, 1), (6, 3)) for padding in (False, True) for dtype in ("fp32", "bf16", "fp16")]
    if args.preset == "gpu-target":
        return [Shape(8, 32, 8, n, 12, 1, 128, "bf16", False) for n in (256, 512, 1024, 2048)]
    if args.preset == "kernel-target":
        return [Shape(8, 32, 8, n, 12, 1, 128, "bf16", False) for n in (1024, 2048, 4096, 8192)]
    return [Shape(args.batch, args.q_heads, args.kv_heads, n, args.a, args.m, args.d, args.dtype, args.padding)
            for n in args.n]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_utils.add_common_args(parser, PROVIDERS, repeats=5)
    parser.add_argument("--preset", choices=["small", "cpu-target", "cpu-sweep", "cpu-auto", "gpu-target",
                                             "kernel-target"],
                        default=None,
                        help="default: small on CPU, gpu-target on CUDA")
    parser.add_argument("--n", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--a", type=int, default=12)
    parser.add_argument("--m", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--q-heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="fp32")
    parser.add_argument("--padding", action="store_true", help="right-pad every other row by 10%%")
    args = parser.parse_args(argv)

    device, providers, device_name, version = bench_utils.prepare(args, CUDA_ONLY)
    args.preset = args.preset or ("gpu-target" if device.type == "cuda" else "small")
    print(f"preset: {args.preset}")
    csv_path = bench_utils.results_path(args, device, "attention")
    csv_path = csv_path.with_name(f"{csv_path.stem}_{args.preset}.csv")
    rows, table = [], []
    for shape in _sweep(args):
        torch.manual_seed(0)
        config = ", ".join(f"{key}={value}" for key, value in asdict(shape).items())
        for provider in providers:
            inputs, mask = _inputs(shape, device)
            forward = _FACTORIES[provider](shape, *inputs, mask)
            measured = bench_utils.measure_modes(
                forward, inputs, args.modes, device, args.repeats, f"{provider} {config}", kernel="thought_attention",
                provider=provider, x_name="n", x_value=shape.n, config=config, device_name=device_name,
                library_version=version)
            for mode, timing, peak, common in measured:
                rows += bench_utils.time_and_memory_rows(timing, peak, **common)
                flops = shape.fwd_flops() * (1.0 if mode == "fwd" else 3.5)
                tflops = tuple(flops / (t * 1e-3) / 1e12 for t in timing)
                rows.append(bench_utils.csv_row(metric="tflops", unit="TFLOP/s", values=tflops, **common))
                table.append((shape, provider, mode, timing[0], peak, tflops[0]))
                bench_utils.write_csv(rows, csv_path)
            del inputs

    _print_table(table)
    bench_utils.write_results(rows, csv_path, f"thought_attention on {device_name}")
    return 0


def _print_table(table) -> None:
    print(f"\n{'shape':<44} {'provider':<19} {'mode':<8} {'ms':>10} {'peak MB':>9} {'TFLOP/s':>8} "
          f"{'speedup':>8} {'mem ratio':>9}")
    baseline = {(s, mode): (ms, mb) for s, p, mode, ms, mb, _ in table if p == "official"}
    for shape, provider, mode, ms, mb, tflops in table:
        base = baseline.get((shape, mode))
        speedup = f"{base[0] / ms:.2f}x" if base else "-"
        mem_ratio = f"{base[1] / mb:.2f}x" if base and mb > 0 else "-"
        heads = f"H{shape.q_heads}/{shape.kv_heads}"
        label = f"B{shape.batch} {heads} n{shape.n} a{shape.a} m{shape.m} d{shape.d} {shape.dtype}"
        print(f"{label:<44} {provider:<19} {mode:<8} {ms:>10.3f} {mb:>9.1f} {tflops:>8.3f} {speedup:>8} "
              f"{mem_ratio:>9}")
    print("speedup and mem ratio are relative to 'official' (higher is better for the other providers)")


if __name__ == "__main__":
    sys.exit(main())
