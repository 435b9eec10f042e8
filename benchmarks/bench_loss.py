"""Benchmark the fused LM-head ops: time and peak memory, forward and forward+backward.

Ops
  mixed_ce  talk NLL with the mixing weight: CE(W @ ((1 - w) h_base + w h_thought), y), ~10% ignored targets
  sample    thought sampling (Gumbel-max, in-kernel noise) + REINFORCE log-prob at temperature 3
Providers
  reference  full (N, V) logits, as the official code (F.cross_entropy / log_softmax, (N, V) Gumbel noise)
  torch      quietstar_fast impl="torch" (row-chunked PyTorch)
  torch_gif  weighted_mixed_cross_entropy (mixed_ce only): the weighted sum of the losses with its gradients
             computed in the forward's pass over the vocabulary (three GEMMs instead of four; its forward includes
             them), for a loss that is the last op, as the talk loss of a Quiet-STaR step
  triton     quietstar_fast impl="triton" (CUDA only)
  cuda       quietstar_fast impl="cuda" (the CUDA C++ kernels; needs the built extension quietstar_fast._C)
  liger      Liger-Kernel's fused linear cross entropy (peer; mixed_ce only, CUDA, when liger-kernel is installed)
  cce        Apple's Cut Cross Entropy with its default gradient filtering (peer; mixed_ce only, CUDA, when
             cut-cross-entropy is installed)
The peers get the mixed hidden states (1 - w) h_base + w h_thought, formed in PyTorch inside the measured call
(mixing hidden states equals mixing logits for a bias-free head), and return per-token losses (reduction "none")
as quietstar_fast does: Quiet-STaR weights each token's loss.

Defaults: on CPU N in {512, 2048}, D = 256, V = 32002, fp32 on one thread (labelled CPU); on CUDA
N in {2048, 8192}, D = 4096, V = 32002, bf16. Results: CSV (Liger's schema) and PNG under benchmarks/results/.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_utils  # noqa: E402

from quietstar_fast import mixed_cross_entropy, sample_thought_tokens, weighted_mixed_cross_entropy  # noqa: E402
from quietstar_fast.loss.mixing import mix_hidden  # noqa: E402

PROVIDERS = ("reference", "torch", "torch_gif", "triton", "cuda", "liger", "cce")
MIXED_CE_ONLY = {"torch_gif", "liger", "cce"}
CUDA_ONLY = {"triton", "cuda", "liger", "cce"}
PEER_MODULES = {"liger": "liger_kernel", "cce": "cut_cross_entropy"}
OPS = ("mixed_ce", "sample")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
META_TOKENS = (32000, 32001)


@dataclass(frozen=True)
class Shape:
    rows: int
    hidden: int
    vocab: int
    dtype: str


def _inputs(shape: Shape, device: torch.device):
    dtype = _DTYPES[shape.dtype]

    def leaf(*size, scale=1.0):
        return (torch.randn(*size, device=device) * scale).to(dtype).requires_grad_(True)

    h_base, h_thought = leaf(shape.rows, shape.hidden), leaf(shape.rows, shape.hidden)
    weight = leaf(shape.vocab, shape.hidden, scale=shape.hidden**-0.5)
    mix_weight = leaf(shape.rows, scale=0.5)
    targets = torch.randint(0, shape.vocab, (shape.rows,), device=device)
    targets[torch.rand(shape.rows, device=device) < 0.1] = -100
    return h_base, h_thought, weight, mix_weight, targets


def _peer_cross_entropy(provider: str):
    """The peer's fused linear cross-entropy as f(hidden, weight, targets) -> per-token loss."""
    if provider == "liger":
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        return lambda hidden, weight, targets: liger_fused_linear_cross_entropy(hidden, weight, targets,
                                                                                reduction="none")
    from cut_cross_entropy import linear_cross_entropy

    return lambda hidden, weight, targets: linear_cross_entropy(hidden, weight, targets, reduction="none")


def _forward(op: str, impl: str, shape: Shape, device: torch.device):
    h_base, h_thought, weight, mix_weight, targets = _inputs(shape, device)
    if op == "mixed_ce" and impl in PEER_MODULES:
        leaves = (h_base, h_thought, weight, mix_weight)
        peer = _peer_cross_entropy(impl)

        def run():
            return peer(mix_hidden(h_base, h_thought, mix_weight), weight, targets)
    elif op == "mixed_ce" and impl == "torch_gif":
        leaves = (h_base, h_thought, weight, mix_weight)
        row_weights = torch.ones(shape.rows, device=device)

        def run():
            return weighted_mixed_cross_entropy(h_base, weight, targets, row_weights, h_thought=h_thought,
                                                mix_weight=mix_weight)[0]
    elif op == "mixed_ce":
        leaves = (h_base, h_thought, weight, mix_weight)

        def run():
            return mixed_cross_entropy(h_base, weight, targets, h_thought=h_thought, mix_weight=mix_weight, impl=impl)
    else:
        leaves = (h_base, weight)
        banned = [t for t in META_TOKENS if t < shape.vocab]
        generator = torch.Generator(device=device).manual_seed(0)

        def run():
            return sample_thought_tokens(h_base, weight, generator=generator, banned_token_ids=banned, impl=impl)[1]
    return run, leaves


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_utils.add_common_args(parser, PROVIDERS, repeats=3)
    parser.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    parser.add_argument("--rows", type=int, nargs="+", default=None, help="N values (default by device)")
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--vocab", type=int, nargs="+", default=[32002])
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default=None)
    args = parser.parse_args(argv)

    device, providers, device_name, version = bench_utils.prepare(args, CUDA_ONLY)
    missing = [p for p in providers if p in PEER_MODULES and importlib.util.find_spec(PEER_MODULES[p]) is None]
    if missing:
        print(f"note: skipped peers that are not installed: {', '.join(missing)}")
    providers = [p for p in providers if p not in missing]
    csv_path = bench_utils.results_path(args, device, "loss")
    on_gpu = device.type == "cuda"
    rows = args.rows or ([2048, 8192] if on_gpu else [512, 2048])
    hidden = args.hidden or (4096 if on_gpu else 256)
    dtype = args.dtype or ("bf16" if on_gpu else "fp32")
    csv_rows, table = [], []
    shapes = [Shape(n, hidden, vocab, dtype) for vocab in args.vocab for n in rows]
    for op in args.ops:
        for shape in shapes:
            config = ", ".join(f"{key}={value}" for key, value in asdict(shape).items())
            for provider in providers:
                if op != "mixed_ce" and provider in MIXED_CE_ONLY:
                    continue  # the peers and torch_gif compute cross-entropy only
                torch.manual_seed(0)
                forward, leaves = _forward(op, provider, shape, device)
                measured = bench_utils.measure_modes(
                    forward, leaves, args.modes, device, args.repeats, f"{op} {provider} {config}", kernel=op,
                    provider=provider, x_name="N", x_value=shape.rows, config=config, device_name=device_name,
                    library_version=version)
                for mode, timing, peak, common in measured:
                    csv_rows += bench_utils.time_and_memory_rows(timing, peak, **common)
                    table.append((op, shape, provider, mode, timing[0], peak))
                    bench_utils.write_csv(csv_rows, csv_path)
                del forward, leaves

    print(f"\n{'op':<9} {'shape':<28} {'provider':<10} {'mode':<8} {'ms':>10} {'peak MB':>9} {'speedup':>8} "
          f"{'mem ratio':>9}")
    baseline = {(op, s, mode): (ms, mb) for op, s, p, mode, ms, mb in table if p == "reference"}
    for op, shape, provider, mode, ms, mb in table:
        base = baseline.get((op, shape, mode))
        speedup = f"{base[0] / ms:.2f}x" if base else "-"
        mem_ratio = f"{base[1] / mb:.2f}x" if base and mb > 0 else "-"
        label = f"N{shape.rows} D{shape.hidden} V{shape.vocab} {shape.dtype}"
        print(f"{op:<9} {label:<28} {provider:<10} {mode:<8} {ms:>10.2f} {mb:>9.1f} {speedup:>8} {mem_ratio:>9}")
    print("speedup and mem ratio are relative to 'reference' (higher is better for the other providers)")

    bench_utils.write_results(csv_rows, csv_path, f"LM-head ops on {device_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
