"""Launchers of the LM-head loss kernels."""
from __future__ import annotations

import torch
import triton

from .configs import KERNEL_DTYPES, dtype_constants, linear_softmax_config
from .linear_softmax_bwd import linear_softmax_grad_kernel
from .linear_softmax_fwd import linear_softmax_fwd_kernel
from .outputs import output_buffer

_PROGRAMS_PER_SM = 2


def kernel_constants(name: str, dtype: torch.dtype, *, sample: bool = False, noise_from_seed: bool = False,
                     has_banned: bool = False, interpret: bool = False):
    """The constexpr arguments and config of kernel ``name``: shared by the launchers and the AOT check."""
    cfg = linear_softmax_config(name, dtype, interpret)
    consts = dict(
        HAS_BANNED=has_banned, BLOCK_M=cfg.block_m, BLOCK_V=cfg.block_v, BLOCK_K=cfg.block_k,
        **dtype_constants(dtype, interpret),
    )
    if name == "lm_fwd":
        consts.update(SAMPLE=sample, NOISE_FROM_SEED=noise_from_seed)
    return consts, cfg


def launchable_variants():
    """Yield (kernel name, kernel, dtype, constexprs, config) for every variant the GPU path can launch."""
    for dtype in KERNEL_DTYPES:
        for has_banned in (False, True):
            yield ("lm_grad", linear_softmax_grad_kernel, dtype,
                   *kernel_constants("lm_grad", dtype, has_banned=has_banned))
            for sample, from_seed in ((False, False), (True, False), (True, True)):
                yield ("lm_fwd", linear_softmax_fwd_kernel, dtype,
                       *kernel_constants("lm_fwd", dtype, sample=sample, noise_from_seed=from_seed,
                                         has_banned=has_banned))


def _or_unused(tensor: torch.Tensor | None, dtype: torch.dtype, like: torch.Tensor) -> torch.Tensor:
    """A pointer argument that a kernel variant does not read still needs the element type the kernel is compiled
    (and ahead-of-time checked) for: stand in with a one-element tensor of that type."""
    return tensor if tensor is not None else torch.empty(1, dtype=dtype, device=like.device)


def _num_splits(num_rows: int, vocab: int, block_m: int, block_v: int, device: torch.device, interpret: bool) -> int:
    """Vocabulary slices per row block: enough programs to fill the GPU when rows alone are too few."""
    tiles = triton.cdiv(vocab, block_v)
    if interpret:
        return min(2, tiles)  # exercises the cross-slice merge on tiny CPU shapes
    programs = _PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(tiles, triton.cdiv(programs, triton.cdiv(num_rows, block_m))))


def linear_softmax_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    *,
    targets: torch.Tensor | None,
    noise: torch.Tensor | None,
    seed: torch.Tensor | None,
    banned: torch.Tensor | None,
    inv_t: float,
    sample_scale: float,
    interpret: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Statistics of z = hidden @ weight^T, never materialised.

    Returns lse (N,) fp32 of z * inv_t (banned ids at -1e10), the picked logit z[target] (N,) fp32, and, when
    ``targets`` is None, the Gumbel-max tokens argmax(z * sample_scale + g) (N,) int64 with g from ``noise`` (N, V)
    or, if that is None, from Philox seeded with ``seed`` (a one-element int64 tensor on the inputs' device).
    """
    num_rows, hidden_dim = hidden.shape
    vocab = weight.shape[0]
    sample = targets is None
    consts, cfg = kernel_constants("lm_fwd", hidden.dtype, sample=sample, noise_from_seed=sample and noise is None,
                                   has_banned=banned is not None, interpret=interpret)
    splits = _num_splits(num_rows, vocab, cfg.block_m, cfg.block_v, hidden.device, interpret)
    vocab_per_split = triton.cdiv(triton.cdiv(vocab, splits), cfg.block_v) * cfg.block_v
    splits = triton.cdiv(vocab, vocab_per_split)
    f32 = dict(dtype=torch.float32, device=hidden.device)
    part_max = output_buffer(num_rows, splits, **f32)
    part_sum = output_buffer(num_rows, splits, **f32)
    part_pick = output_buffer(num_rows, splits, **f32)
    part_best = output_buffer(num_rows, splits, **f32) if sample else None
    part_index = output_buffer(num_rows, splits, dtype=torch.int32, device=hidden.device) if sample else None
    noise = noise.to(torch.float32) if noise is not None else None
    linear_softmax_fwd_kernel[(triton.cdiv(num_rows, cfg.block_m), splits)](
        hidden, weight,
        _or_unused(targets, torch.int64, hidden), _or_unused(noise, torch.float32, hidden),
        _or_unused(seed, torch.int64, hidden), _or_unused(banned, torch.int8, hidden),
        part_max, part_sum, part_pick, _or_unused(part_best, torch.float32, hidden),
        _or_unused(part_index, torch.int32, hidden),
        num_rows, vocab, hidden_dim, hidden.stride(0), weight.stride(0),
        noise.stride(0) if noise is not None else 0, vocab_per_split,
        inv_t, sample_scale,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **consts,
    )
    row_max = part_max.amax(dim=1)
    lse = row_max + torch.log((part_sum * torch.exp(part_max - row_max[:, None])).sum(dim=1))
    if not sample:
        return lse, part_pick.sum(dim=1), None
    winner = part_best.argmax(dim=1, keepdim=True)  # first slice on ties: the lowest id wins, as in torch.argmax
    tokens = part_index.gather(1, winner).squeeze(1).long()
    return lse, part_pick.gather(1, winner).squeeze(1), tokens


def linear_softmax_grad(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    lse: torch.Tensor,
    targets: torch.Tensor,
    coef: torch.Tensor,
    banned: torch.Tensor | None,
    inv_t: float,
    interpret: bool,
) -> torch.Tensor:
    """G (C, V) in hidden's dtype: coef * inv_t * (softmax(z * inv_t) - onehot(targets)) for z = hidden @ weight^T,
    logits recomputed in fp32 like the forward; banned ids masked."""
    rows, hidden_dim = hidden.shape
    vocab = weight.shape[0]
    grad = output_buffer(rows, vocab, dtype=hidden.dtype, device=hidden.device)
    consts, cfg = kernel_constants("lm_grad", hidden.dtype, has_banned=banned is not None, interpret=interpret)
    linear_softmax_grad_kernel[(triton.cdiv(rows, cfg.block_m), triton.cdiv(vocab, cfg.block_v))](
        hidden, weight, lse, targets, coef, _or_unused(banned, torch.int8, hidden), grad,
        rows, vocab, hidden_dim, hidden.stride(0), weight.stride(0), grad.stride(0), inv_t,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **consts,
    )
    return grad
