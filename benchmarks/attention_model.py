"""Bytes, FLOPs and launches of thought attention on a GPU, per provider, written before the kernels they judge.

For one forward + backward call at the gpu-target shapes (B=8, Hq=32, Hkv=8, d=128, a=12, m=1, bf16), the HBM
bytes each kernel must move (every tensor read or written once; L2 reuse inside a kernel counted as free), the FLOPs
it must do (live entries only, FlashAttention's 4d per entry forward, 2.5x that backward) and the kernel launches,
giving a predicted device time max(bytes / bandwidth, FLOPs / peak) per kernel, summed, next to the launch count
times a launch cost (a call whose launches take longer than its kernels is host-bound).

Providers
  floor      causal attention over the prefix alone (FlashAttention-2 in PyTorch): no stream key exists
  fused      the design of issue #24: the flash kernel for the prefix, one stream+merge forward kernel (each stream
             key and value read once per KV head, the merge in registers) and one stream backward kernel (dQ added
             into the flash dQ, stream dK/dV written once in the model dtype)
  composite  impl="sdpa" as written today on CUDA: the flash kernel plus the stream part in PyTorch ops, a loop over
             (batch, KV head) in fp32 (quietstar_fast/attention/stream_part.py); its launch count is the count of
             ops that write memory, which tests/test_attention_model.py measures on CPU

    python benchmarks/attention_model.py [--gpu h100|h200]   # prints the table and writes
                                                             # benchmarks/results/attention_model_<gpu>.csv
"""
from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

# Peak rates: H100 SXM as issue #24 states them; H200 as measured on the device tool's machine (docs/benchmarks.md).
GPUS = {"h100": dict(bandwidth=3.3e12, flops=700e12), "h200": dict(bandwidth=4.3e12, flops=790e12)}
LAUNCH_SECONDS = 4e-6  # host cost of one kernel launch through PyTorch's dispatcher (eager), order of magnitude
BF16, FP32 = 2, 4


@dataclass(frozen=True)
class Shape:
    batch: int = 8
    q_heads: int = 32
    kv_heads: int = 8
    n: int = 2048
    a: int = 12
    m: int = 1
    d: int = 128

    @property
    def group(self) -> int:
        return self.q_heads // self.kv_heads

    def q_elements(self) -> int:
        return self.batch * self.q_heads * self.m * self.n * self.d

    def prefix_kv_elements(self) -> int:  # one of K or V, the prefix rows
        return self.batch * self.kv_heads * self.n * self.d

    def stream_kv_elements(self) -> int:  # one of K or V, the a stream rows
        return self.batch * self.kv_heads * self.a * self.n * self.d

    def stats(self) -> int:  # one statistic per query row
        return self.batch * self.q_heads * self.m * self.n

    def stream_scores(self) -> int:  # (B, Hkv, n, G*m, a)
        return self.stats() * self.a


@dataclass(frozen=True)
class Kernel:
    name: str
    bytes: float
    flops: float = 0.0
    launches: int = 1

    def seconds(self, gpu: dict) -> float:
        return max(self.bytes / gpu["bandwidth"], self.flops / gpu["flops"])


def flash_prefix(s: Shape) -> list[Kernel]:
    """FlashAttention-2 causal over the n prefix keys, forward and backward (dot(dO, O), main, dQ conversion)."""
    live = s.batch * s.q_heads * s.m * s.n * (s.n + 1) / 2  # causal entries
    q, kv = s.q_elements() * BF16, 2 * s.prefix_kv_elements() * BF16
    return [
        Kernel("flash forward", q + kv + q + s.stats() * FP32, 4 * s.d * live),
        Kernel("flash backward: delta = rowsum(dO * O)", 2 * q + s.stats() * FP32),
        Kernel("flash backward", 3 * q + 2 * kv + 2 * s.stats() * FP32 + 2 * s.q_elements() * FP32 + kv,
               2.5 * 4 * s.d * live),
        Kernel("flash backward: dQ fp32 -> bf16", s.q_elements() * (FP32 + BF16)),
    ]


def fused_stream(s: Shape) -> list[Kernel]:
    """The two stream kernels of the fused design; their FLOPs (4d per stream entry, a per query) are negligible."""
    q, skv = s.q_elements() * BF16, 2 * s.stream_kv_elements() * BF16
    entries = s.stats() * s.a
    return [
        # reads q, the stream K/V once per KV head, the prefix o and lse; writes o and lse in place
        Kernel("stream+merge forward", q + skv + 2 * q + 2 * s.stats() * FP32, 4 * s.d * entries),
        # reads q, dO, o (delta in-kernel), lse, the stream K/V; adds into the flash dQ; writes the stream dK/dV
        Kernel("stream backward", 3 * q + skv + s.stats() * FP32 + 2 * q + skv, 2.5 * 4 * s.d * entries),
    ]


# Ops that write memory (kernel launches; one per flash call) of impl="sdpa" on 16-bit inputs without padding,
# counted on CPU by tests/test_attention_model.py with tests/host_waits.py's KernelLaunches:
# forward: 21 fixed (the flash call, q -> fp32 position-major, the mask, logsumexp/logaddexp, the rescale and merge,
# the casts back) + 4 per (batch, KV head) (the stream K and V cast to fp32, two batched matmuls);
# backward: 19 fixed on CUDA + per (batch, KV head) 7 (K/V casts, dS and dq matmuls, scaling) and the key-side
# gradients: 2 per query row of a position (G*m <= 4: multiply-adds straight into dK/dV), else 6 (a GEMM, a
# contiguous operand and a transposing copy per side). The CPU backward makes 4 more: its 16-bit inputs cast to
# fp32 (issue #28), minus the fp32 dq cast that CUDA's 16-bit flash dq needs.
COMPOSITE_FIXED = {"forward": 21, "backward": {"cuda": 19, "cpu": 23}}


def composite_launches(s: Shape, device: str = "cuda") -> tuple[int, int]:
    """(forward, backward) ops that write memory, each flash call counted once."""
    heads = s.batch * s.kv_heads
    rows = s.group * s.m
    per_head_backward = 7 + (2 * rows if rows <= 4 else 6)
    return (COMPOSITE_FIXED["forward"] + 4 * heads,
            COMPOSITE_FIXED["backward"][device] + per_head_backward * heads)


def composite_stream(s: Shape) -> list[Kernel]:
    """The stream part as PyTorch ops: every fp32 copy and every pass over the (B, Hkv, n, G*m, a) scores."""
    q16, q32 = s.q_elements() * BF16, s.q_elements() * FP32
    skv16, skv32 = s.stream_kv_elements() * BF16, s.stream_kv_elements() * FP32
    scores, stats = s.stream_scores() * FP32, s.stats() * FP32
    forward = [
        Kernel("q -> fp32, position-major", q16 + q32),
        Kernel("stream K, V -> fp32 (per head)", 2 * (skv16 + skv32)),
        Kernel("scores = q K^T (per head)", q32 + skv32 + scores, 2 * s.d * s.stream_scores()),
        Kernel("scale, mask, logsumexp, subtract, exp", 6 * scores + 4 * stats),
        Kernel("prefix o -> fp32, rescale", q16 + 3 * q32 + 3 * stats),
        Kernel("o += P V (per head)", scores + skv32 + 3 * q32, 2 * s.d * s.stream_scores()),
        Kernel("o -> bf16", q32 + q16),
    ]
    backward = [
        Kernel("dq -> fp32, delta", q16 + q32 + 2 * q16 + stats),
        Kernel("q, dO -> fp32, position-major", 2 * (q16 + q32)),
        Kernel("stream K, V -> fp32 (per head)", 2 * (skv16 + skv32)),
        Kernel("dS = P (dO V^T - delta) (per head)", 2 * q32 + skv32 + 4 * scores, 2 * s.d * s.stream_scores()),
        Kernel("dq += dS K (per head)", scores + skv32 + 3 * q32, 2 * s.d * s.stream_scores()),
        Kernel("stream dK, dV multiply-adds (per head)", 2 * (scores + q32 + s.group * s.m * skv32),
               4 * s.d * s.stream_scores()),
        Kernel("dq, dk, dv -> bf16", q32 + q16 + 2 * (skv32 + skv16) + 2 * s.prefix_kv_elements() * (FP32 + BF16)),
    ]
    # Launches: the measured op count (composite_launches), not one per row here.
    return [Kernel(k.name, k.bytes, k.flops, launches=0) for k in forward + backward]


def provider_kernels(provider: str, s: Shape) -> list[Kernel]:
    if provider == "floor":
        return flash_prefix(s)
    if provider == "fused":
        return flash_prefix(s) + fused_stream(s)
    return flash_prefix(s) + composite_stream(s)


def summary(provider: str, s: Shape, gpu: dict) -> dict:
    kernels = provider_kernels(provider, s)
    device = sum(k.seconds(gpu) for k in kernels)
    launches = sum(k.launches for k in kernels)
    if provider == "composite":  # its own ops, less the two flash calls that flash_prefix counts as kernels
        launches += sum(composite_launches(s)) - 2
    return dict(provider=provider, n=s.n, gbytes=sum(k.bytes for k in kernels) / 1e9,
                tflop=sum(k.flops for k in kernels) / 1e12, launches=launches, device_ms=device * 1e3,
                launch_ms=launches * LAUNCH_SECONDS * 1e3, predicted_ms=max(device, launches * LAUNCH_SECONDS) * 1e3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", choices=sorted(GPUS), default="h100")
    parser.add_argument("--n", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    gpu = GPUS[args.gpu]
    rows = [summary(p, Shape(n=n), gpu) for n in args.n for p in ("floor", "fused", "composite")]
    floor = {r["n"]: r["predicted_ms"] for r in rows if r["provider"] == "floor"}
    print(f"{args.gpu}: {gpu['bandwidth'] / 1e12:.1f} TB/s, {gpu['flops'] / 1e12:.0f} TFLOP/s, "
          f"{LAUNCH_SECONDS * 1e6:.0f} us per launch; B=8 Hq=32 Hkv=8 a=12 m=1 d=128 bf16, forward + backward")
    print(f"{'n':>5} {'provider':<10} {'GB':>7} {'TFLOP':>7} {'launches':>8} {'device ms':>9} {'launch ms':>9} "
          f"{'predicted':>9} {'/ floor':>7}")
    for r in rows:
        r["vs_floor"] = r["predicted_ms"] / floor[r["n"]]
        print(f"{r['n']:>5} {r['provider']:<10} {r['gbytes']:>7.3f} {r['tflop']:>7.3f} {r['launches']:>8} "
              f"{r['device_ms']:>9.3f} {r['launch_ms']:>9.3f} {r['predicted_ms']:>9.3f} {r['vs_floor']:>6.2f}x")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"attention_model_{args.gpu}.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
