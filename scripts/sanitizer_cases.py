"""One small case of every GPU kernel, for compute-sanitizer (memcheck, racecheck) in scripts/gpu_check.sh.

    compute-sanitizer --tool memcheck python scripts/sanitizer_cases.py --impl cuda

Each case exercises the awkward paths at once: n not a multiple of any tile, padding (including a row that sees no
key), GQA, a window, several query steps, an LSE gradient; the LM-head ops with banned ids, ignored targets, a
vocabulary that is not a multiple of the tile, noise from a tensor and from the in-kernel generator.
"""
from __future__ import annotations

import argparse

import torch

from quietstar_fast import mixed_cross_entropy, sample_thought_tokens, thought_attention


def attention_case(impl: str, dtype: torch.dtype, head_dim: int) -> None:
    batch, q_heads, kv_heads, n, a, m = 2, 4, 2, 37, 3, 2
    q = torch.randn(batch, q_heads, m * n, head_dim, device="cuda", dtype=dtype, requires_grad=True)
    k = torch.randn(batch, kv_heads, (a + 1) * n, head_dim, device="cuda", dtype=dtype, requires_grad=True)
    v = torch.randn_like(k, requires_grad=True)
    valid = torch.ones(batch, n, dtype=torch.bool, device="cuda")
    valid[0, :3] = False  # left padding: position 0 sees no key at all
    valid[1, -5:] = False
    out, lse = thought_attention(q, k, v, prefix_len=n, key_padding_mask=valid, sliding_window=9, return_lse=True,
                                 impl=impl)
    (out.float().sum() + lse.masked_fill(torch.isinf(lse), 0).sum()).backward()


def loss_case(impl: str, dtype: torch.dtype) -> None:
    rows, hidden, vocab = 45, 96, 1003
    h = torch.randn(rows, hidden, device="cuda", dtype=dtype, requires_grad=True)
    w = (torch.randn(vocab, hidden, device="cuda", dtype=dtype) / hidden**0.5).requires_grad_(True)
    targets = torch.randint(0, vocab, (rows,), device="cuda")
    targets[:4] = -100
    mixed_cross_entropy(h, w, targets, impl=impl).sum().backward()
    noise = -torch.empty(rows, vocab, device="cuda").exponential_().log()
    for gumbel_noise in (noise, None):
        _, logprob = sample_thought_tokens(h, w, gumbel_noise=gumbel_noise, banned_token_ids=[0, 7], impl=impl)
        logprob.sum().backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=("cuda", "triton"), required=True)
    args = parser.parse_args()
    for dtype in (torch.bfloat16, torch.float32):
        for head_dim in (64, 128):
            attention_case(args.impl, dtype, head_dim)
        loss_case(args.impl, dtype)
    torch.cuda.synchronize()
    print(f"sanitizer cases ran: impl={args.impl}")


if __name__ == "__main__":
    main()
