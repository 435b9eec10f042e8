"""The CUDA extension's ops behind Python-side argument checks.

Every call through ``quietstar_fast.cuda_ext.ops()`` is checked here first: devices (one CUDA device for every
tensor), dtypes, shapes, the strides the kernels index with, and the scalars. A wrong call raises a Python error that
names the argument and never reaches C++. The C++ op layer (csrc/ops.cpp) checks the same before it touches a stream,
a device guard or a pointer, for callers of ``torch.ops.quietstar_fast`` itself; on the H200 an error raised from
there killed the process (issue #26), so the library's own calls must never depend on it.
"""
from __future__ import annotations

import math

import torch

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 128
_INT32_MAX = 2**31 - 1


def _tensors(named: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor]:
    present = {name: x for name, x in named.items() if x is not None}
    for name, x in present.items():
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return present


def _on_one_device(op: str, device_type: str, named: dict[str, torch.Tensor | None]) -> None:
    tensors = _tensors(named)
    first_name, first = next(iter(tensors.items()))
    for name, x in tensors.items():
        if x.device.type != device_type:
            raise ValueError(f"quietstar_fast::{op} runs on {device_type.upper()} tensors; {name} is on {x.device}. "
                             f"Use impl='torch' for CPU tensors.")
        if x.device != first.device:
            raise ValueError(f"{name} is on {x.device} but {first_name} is on {first.device}")


def _dtype(name: str, x: torch.Tensor, dtype: torch.dtype) -> None:
    if x.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {x.dtype}")


def _kernel_dtype(name: str, x: torch.Tensor) -> None:
    if x.dtype not in KERNEL_DTYPES:
        raise TypeError(f"{name} has dtype {x.dtype}; the CUDA kernels support float16, bfloat16 and float32 "
                        f"(use impl='torch' for float64)")


def _shape(name: str, x: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {what} = {shape}, got {tuple(x.shape)}")


def _rows(name: str, x: torch.Tensor, rows: int, dtype: torch.dtype) -> None:
    _shape(name, x, (rows,), "(rows,)")
    _dtype(name, x, dtype)
    if not x.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def _positive_finite(name: str, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def check_attention(op: str, q, k, v, key_valid, prefix_len: int, sliding_window: int, softmax_scale: float, *,
                    device_type: str = "cuda") -> None:
    for name, x in _tensors(dict(q=q, k=k, v=v)).items():
        if x.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, heads, tokens, head_dim), got shape {tuple(x.shape)}")
    _on_one_device(op, device_type, dict(q=q, k=k, v=v, key_valid=key_valid))
    _kernel_dtype("q", q)
    for name, x in (("k", k), ("v", v)):
        _dtype(name, x, q.dtype)
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    batch, q_heads, q_tokens, head_dim = q.shape
    _, kv_heads, k_tokens, _ = k.shape
    if batch < 1 or q_heads < 1 or k.shape[0] != batch or k.shape[3] != head_dim:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must share batch and head_dim")
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be in [1, {MAX_HEAD_DIM}] for the CUDA kernels, got {head_dim}")
    if kv_heads < 1 or q_heads % kv_heads:
        raise ValueError(f"q heads ({q_heads}) must be a multiple of k/v heads ({kv_heads})")
    if isinstance(prefix_len, bool) or not isinstance(prefix_len, int) or prefix_len < 1:
        raise ValueError(f"prefix_len must be a positive int, got {prefix_len!r}")
    if k_tokens % prefix_len or q_tokens == 0 or q_tokens % prefix_len or q_tokens > k_tokens:
        raise ValueError(f"q has {q_tokens} and k {k_tokens} tokens: both must be multiples of prefix_len="
                         f"{prefix_len}, q's at most k's")
    if k_tokens > _INT32_MAX or batch * q_heads > _INT32_MAX:
        raise ValueError(f"problem too large for the kernels' 32-bit grid: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if isinstance(sliding_window, bool) or not isinstance(sliding_window, int) or sliding_window < 0:
        raise ValueError(f"sliding_window must be an int >= 0 (0 = none), got {sliding_window!r}")
    _positive_finite("softmax_scale", softmax_scale)
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.stride(3) != 1:
            raise ValueError(f"{name} must be contiguous in the head dimension (stride 1), got stride {x.stride(3)}")
    if key_valid is not None:
        _dtype("key_valid", key_valid, torch.int8)
        _shape("key_valid", key_valid, (batch, prefix_len), "(batch, prefix_len)")
        if key_valid.stride(1) != 1:
            raise ValueError("key_valid must be contiguous in its last dimension")


def check_attention_backward(q, out, lse, grad_out, grad_lse, *, device_type: str = "cuda") -> None:
    """After ``check_attention`` of the same call."""
    _on_one_device("thought_attention_bwd", device_type,
                   dict(q=q, out=out, lse=lse, grad_out=grad_out, grad_lse=grad_lse))
    for name, x in (("out", out), ("grad_out", grad_out)):
        _shape(name, x, tuple(q.shape), "q's shape")
        _dtype(name, x, q.dtype)
        if x.stride(3) != 1:
            raise ValueError(f"{name} must be contiguous in the head dimension (stride 1), got stride {x.stride(3)}")
    for name, x in (("lse", lse), ("grad_lse", grad_lse)):
        if x is not None:
            _shape(name, x, tuple(q.shape[:3]), "(batch, q heads, q tokens)")
            _dtype(name, x, torch.float32)
            if not x.is_contiguous():
                raise ValueError(f"{name} must be contiguous")


def check_linear(op: str, hidden, weight, banned, inv_t: float, *, device_type: str = "cuda",
                 per_row: dict | None = None, others: dict | None = None) -> None:
    """hidden (N, D) and weight (V, D) of one dtype with unit column stride, banned (V,) int8; ``per_row``: name ->
    (tensor, dtype) for required (N,) tensors; ``others``: further tensors that must share the device."""
    per_row, others = per_row or {}, others or {}
    for name, (x, _) in per_row.items():
        if x is None:
            raise TypeError(f"{name} must be a torch.Tensor, got None")
    for name, x in _tensors(dict(hidden=hidden, weight=weight)).items():
        if x.dim() != 2:
            raise ValueError(f"{name} must be 2-D (rows or vocab, hidden_dim), got shape {tuple(x.shape)}")
    _on_one_device(op, device_type, dict(hidden=hidden, weight=weight, banned=banned, **others,
                                         **{name: x for name, (x, _) in per_row.items()}))
    _kernel_dtype("hidden", hidden)
    _dtype("weight", weight, hidden.dtype)
    rows, dim = hidden.shape
    if weight.shape[1] != dim:
        raise ValueError(f"weight has hidden size {weight.shape[1]} but hidden has {dim}")
    if min(rows, dim, weight.shape[0]) < 1 or max(rows, dim, weight.shape[0]) > _INT32_MAX:
        raise ValueError(f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} must be non-empty and "
                         f"below 2^31 in every size")
    if hidden.stride(1) != 1 or weight.stride(1) != 1:
        raise ValueError("hidden and weight must be contiguous in their last dimension")
    _positive_finite("inv_t", inv_t)
    if banned is not None:
        _dtype("banned", banned, torch.int8)
        _shape("banned", banned, (weight.shape[0],), "(vocab,)")
        if not banned.is_contiguous():
            raise ValueError("banned must be contiguous")
    for name, (x, dtype) in per_row.items():
        _rows(name, x, rows, dtype)


def check_linear_forward(hidden, weight, targets, noise, seed, banned, inv_t: float, sample_scale: float, *,
                         device_type: str = "cuda") -> None:
    check_linear("linear_softmax_fwd", hidden, weight, banned, inv_t, device_type=device_type,
                 per_row={} if targets is None else {"targets": (targets, torch.int64)},
                 others=dict(noise=noise, seed=seed))
    if noise is not None:
        if targets is not None:
            raise ValueError("noise is only used for sampling (without targets)")
        _dtype("noise", noise, torch.float32)
        _shape("noise", noise, (hidden.shape[0], weight.shape[0]), "(rows, vocab)")
        if noise.stride(1) != 1:
            raise ValueError("noise must have unit column stride")
    elif targets is None:
        if seed is None:
            raise ValueError("sampling without noise needs a seed")
        _dtype("seed", seed, torch.int64)
        if seed.numel() != 1:
            raise ValueError(f"seed must hold one element, got shape {tuple(seed.shape)}")
    if not math.isfinite(sample_scale):
        raise ValueError(f"sample_scale must be finite, got {sample_scale!r}")


class CheckedOps:
    """``torch.ops.quietstar_fast`` behind the checks above; ``raw`` and ``device_type``: another namespace with the
    same ops and the device its tensors are on (the CPU emulation of the kernels, tests/emulated_cuda.py)."""

    def __init__(self, raw=None, device_type: str = "cuda"):
        self.raw = torch.ops.quietstar_fast if raw is None else raw
        self.device_type = device_type

    def thought_attention_fwd(self, q, k, v, key_valid, prefix_len, sliding_window, softmax_scale):
        check_attention("thought_attention_fwd", q, k, v, key_valid, prefix_len, sliding_window, softmax_scale,
                        device_type=self.device_type)
        return self.raw.thought_attention_fwd(q, k, v, key_valid, prefix_len, sliding_window, softmax_scale)

    def thought_attention_bwd(self, q, k, v, out, lse, grad_out, grad_lse, key_valid, prefix_len, sliding_window,
                              softmax_scale):
        check_attention("thought_attention_bwd", q, k, v, key_valid, prefix_len, sliding_window, softmax_scale,
                        device_type=self.device_type)
        check_attention_backward(q, out, lse, grad_out, grad_lse, device_type=self.device_type)
        return self.raw.thought_attention_bwd(q, k, v, out, lse, grad_out, grad_lse, key_valid, prefix_len,
                                              sliding_window, softmax_scale)

    def linear_softmax_fwd(self, hidden, weight, targets, noise, seed, banned, inv_t, sample_scale):
        check_linear_forward(hidden, weight, targets, noise, seed, banned, inv_t, sample_scale,
                             device_type=self.device_type)
        return self.raw.linear_softmax_fwd(hidden, weight, targets, noise, seed, banned, inv_t, sample_scale)

    def linear_softmax_grad(self, hidden, weight, lse, targets, coef, banned, inv_t):
        check_linear("linear_softmax_grad", hidden, weight, banned, inv_t, device_type=self.device_type,
                     per_row=dict(lse=(lse, torch.float32), targets=(targets, torch.int64), coef=(coef, torch.float32)))
        return self.raw.linear_softmax_grad(hidden, weight, lse, targets, coef, banned, inv_t)
