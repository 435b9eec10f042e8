"""The CUDA extension's ops behind their Python-side checks (quietstar_fast/cuda_checks.py): every wrong call raises
a Python error that names the argument before anything reaches C++ (on the H200 an error raised inside the
extension killed the process), and a right call goes through unchanged.

No GPU or extension is needed: the tensors are fake CUDA tensors (FakeTensorMode: shapes, dtypes and devices, no
memory), and the op namespace is a recorder that fails the test if a wrong call reaches it.
"""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from quietstar_fast.cuda_checks import CheckedOps


class _RecordingOps:
    """Stands in for torch.ops.quietstar_fast: records which op was called."""

    def __init__(self):
        self.called = []

    def __getattr__(self, name):
        def op(*args):
            self.called.append(name)
            return name
        return op


def _cuda(*shape, dtype=torch.float16, stride=None):
    """A fake CUDA tensor (fake tensors cannot be sliced: a view would ask a CUDA device for its storage)."""
    if stride is None:
        return torch.empty(*shape, dtype=dtype, device="cuda")
    return torch.empty_strided(shape, stride, dtype=dtype, device="cuda")


def _attention(**changes):
    """thought_attention_bwd's arguments (q, k, v, out, lse, grad_out, grad_lse, key_valid, n, window, scale)."""
    f16 = dict(dtype=torch.float16, device="cuda")
    q = torch.empty(2, 4, 16, 64, **f16)
    k = torch.empty(2, 2, 24, 64, **f16)
    args = dict(q=q, k=k, v=torch.empty_like(k), out=torch.empty_like(q),
                lse=torch.empty(2, 4, 16, device="cuda"), grad_out=torch.empty_like(q),
                grad_lse=torch.empty(2, 4, 16, device="cuda"),
                key_valid=torch.ones(2, 8, dtype=torch.int8, device="cuda"), prefix_len=8, sliding_window=0,
                softmax_scale=0.125)
    args.update({name: value(args) if callable(value) else value for name, value in changes.items()})
    return args


def _forward_args(args):
    return [args[name] for name in ("q", "k", "v", "key_valid", "prefix_len", "sliding_window", "softmax_scale")]


def _linear(**changes):
    """linear_softmax_fwd's arguments plus lse/coef for linear_softmax_grad."""
    hidden = torch.empty(5, 32, dtype=torch.bfloat16, device="cuda")
    args = dict(hidden=hidden, weight=torch.empty(100, 32, dtype=torch.bfloat16, device="cuda"),
                targets=torch.zeros(5, dtype=torch.int64, device="cuda"), noise=None,
                seed=torch.zeros(1, dtype=torch.int64, device="cuda"), banned=torch.zeros(100, dtype=torch.int8,
                                                                                          device="cuda"),
                inv_t=1.0, sample_scale=1.0, lse=torch.empty(5, device="cuda"), coef=torch.empty(5, device="cuda"))
    args.update({name: value(args) if callable(value) else value for name, value in changes.items()})
    return args


def _call(op: str, args: dict, ops: CheckedOps):
    if op == "thought_attention_fwd":
        return ops.thought_attention_fwd(*_forward_args(args))
    if op == "thought_attention_bwd":
        return ops.thought_attention_bwd(*args.values())
    if op == "linear_softmax_fwd":
        return ops.linear_softmax_fwd(*(args[name] for name in ("hidden", "weight", "targets", "noise", "seed",
                                                                 "banned", "inv_t", "sample_scale")))
    return ops.linear_softmax_grad(*(args[name] for name in ("hidden", "weight", "lse", "targets", "coef", "banned",
                                                             "inv_t")))


ATTENTION_ERRORS = [
    (dict(q=lambda a: _cuda(4, 16, 64)), ValueError, "q must be 4-D"),
    (dict(k=lambda a: a["k"].cpu()), ValueError, "runs on CUDA tensors; k is on cpu"),
    (dict(v=lambda a: a["v"].to("cuda:1")), ValueError, "v is on cuda:1 but q is on cuda:0"),
    (dict(key_valid=lambda a: a["key_valid"].cpu()), ValueError, "key_valid is on cpu"),
    (dict(q=lambda a: a["q"].double()), TypeError, "q has dtype torch.float64"),
    (dict(k=lambda a: a["k"].float()), TypeError, "k must have dtype torch.float16"),
    (dict(v=lambda a: _cuda(2, 2, 16, 64)), ValueError, "k and v must have the same shape"),
    (dict(q=lambda a: _cuda(2, 3, 16, 64)), ValueError, r"q heads \(3\) must be a multiple"),
    (dict(prefix_len=7), ValueError, "multiples of prefix_len=7"),
    (dict(prefix_len=True), ValueError, "prefix_len must be a positive int"),
    (dict(q=lambda a: torch.empty(2, 4, 32, 64, dtype=torch.float16, device="cuda")), ValueError, "q's at most k's"),
    (dict(q=lambda a: torch.empty(2, 4, 16, 160, dtype=torch.float16, device="cuda"),
          k=lambda a: torch.empty(2, 2, 24, 160, dtype=torch.float16, device="cuda"),
          v=lambda a: torch.empty(2, 2, 24, 160, dtype=torch.float16, device="cuda")),
     ValueError, r"head_dim must be in \[1, 128\]"),
    (dict(k=lambda a: _cuda(2, 2, 24, 64, stride=(3072, 1536, 1, 24))), ValueError,
     "k must be contiguous in the head dimension"),
    (dict(key_valid=lambda a: a["key_valid"].bool()), TypeError, "key_valid must have dtype torch.int8"),
    (dict(key_valid=lambda a: torch.ones(1, 8, dtype=torch.int8, device="cuda")), ValueError,
     r"key_valid must have shape \(batch, prefix_len\)"),
    (dict(sliding_window=-1), ValueError, "sliding_window must be an int >= 0"),
    (dict(softmax_scale=float("nan")), ValueError, "softmax_scale must be a positive finite number"),
]
ATTENTION_BACKWARD_ERRORS = [
    (dict(out=lambda a: a["out"].cpu()), ValueError, "runs on CUDA tensors; out is on cpu"),
    (dict(grad_out=lambda a: a["grad_out"].float()), TypeError, "grad_out must have dtype torch.float16"),
    (dict(lse=lambda a: _cuda(2, 4, 9, dtype=torch.float32)), ValueError,
     r"lse must have shape \(batch, q heads, q tokens\)"),
    (dict(grad_lse=lambda a: a["grad_lse"].half()), TypeError, "grad_lse must have dtype torch.float32"),
    (dict(lse=lambda a: _cuda(2, 4, 16, dtype=torch.float32, stride=(64, 1, 4))), ValueError,
     "lse must be contiguous"),
]
LINEAR_ERRORS = [
    (dict(hidden=lambda a: _cuda(1, 5, 32, dtype=torch.bfloat16)), ValueError, "hidden must be 2-D"),
    (dict(weight=lambda a: a["weight"].cpu()), ValueError, "runs on CUDA tensors; weight is on cpu"),
    (dict(targets=lambda a: a["targets"].to("cuda:1")), ValueError, "targets is on cuda:1"),
    (dict(hidden=lambda a: a["hidden"].double(), weight=lambda a: a["weight"].double()), TypeError,
     "hidden has dtype torch.float64"),
    (dict(weight=lambda a: a["weight"].half()), TypeError, "weight must have dtype torch.bfloat16"),
    (dict(weight=lambda a: _cuda(100, 16, dtype=torch.bfloat16)), ValueError, "weight has hidden size 16"),
    (dict(weight=lambda a: _cuda(100, 32, dtype=torch.bfloat16, stride=(1, 100))), ValueError,
     "contiguous in their last dimension"),
    (dict(targets=lambda a: a["targets"].int()), TypeError, "targets must have dtype torch.int64"),
    (dict(targets=lambda a: _cuda(4, dtype=torch.int64)), ValueError, r"targets must have shape \(rows,\)"),
    (dict(banned=lambda a: _cuda(99, dtype=torch.int8)), ValueError, r"banned must have shape \(vocab,\)"),
    (dict(inv_t=0.0), ValueError, "inv_t must be a positive finite number"),
]
LINEAR_FORWARD_ERRORS = [
    (dict(targets=None, seed=None), ValueError, "sampling without noise needs a seed"),
    (dict(targets=None, seed=lambda a: a["seed"].cpu()), ValueError, "seed is on cpu"),
    (dict(noise=lambda a: torch.empty(5, 100, device="cuda")), ValueError, "noise is only used for sampling"),
    (dict(targets=None, noise=lambda a: torch.empty(5, 99, device="cuda")), ValueError,
     r"noise must have shape \(rows, vocab\)"),
    (dict(sample_scale=float("inf")), ValueError, "sample_scale must be finite"),
]
LINEAR_GRAD_ERRORS = [
    (dict(lse=None), TypeError, "lse must be a torch.Tensor, got None"),
    (dict(coef=lambda a: a["coef"].cpu()), ValueError, "coef is on cpu"),
    (dict(lse=lambda a: a["lse"].half()), TypeError, "lse must have dtype torch.float32"),
]
CASES = (
    [(op, *case) for op in ("thought_attention_fwd", "thought_attention_bwd") for case in ATTENTION_ERRORS]
    + [("thought_attention_bwd", *case) for case in ATTENTION_BACKWARD_ERRORS]
    + [(op, *case) for op in ("linear_softmax_fwd", "linear_softmax_grad") for case in LINEAR_ERRORS]
    + [("linear_softmax_fwd", *case) for case in LINEAR_FORWARD_ERRORS]
    + [("linear_softmax_grad", *case) for case in LINEAR_GRAD_ERRORS]
)


@pytest.mark.parametrize("op, changes, error, message", CASES, ids=[f"{c[0]}: {c[3]}" for c in CASES])
def test_a_wrong_call_raises_before_the_op(op, changes, error, message):
    raw = _RecordingOps()
    with FakeTensorMode():
        args = (_attention if op.startswith("thought") else _linear)(**changes)
        with pytest.raises(error, match=message):
            _call(op, args, CheckedOps(raw))
    assert raw.called == []


OPS = ["thought_attention_fwd", "thought_attention_bwd", "linear_softmax_fwd", "linear_softmax_grad"]


@pytest.mark.parametrize("op", OPS)
def test_cpu_tensors_are_refused(op):
    """Every tensor on the CPU, as in the tests that crashed on the H200."""
    raw = _RecordingOps()
    with FakeTensorMode():
        args = {name: x.cpu() if isinstance(x, torch.Tensor) else x
                for name, x in (_attention if op.startswith("thought") else _linear)().items()}
        with pytest.raises(ValueError, match=f"quietstar_fast::{op} runs on CUDA tensors; \\w+ is on cpu. "
                                             "Use impl='torch'"):
            _call(op, args, CheckedOps(raw))
    assert raw.called == []


@pytest.mark.parametrize("op", OPS)
def test_a_right_call_on_any_gpu_reaches_the_op(op):
    """The same call on the first and on a second GPU goes through (also sampling, with a seed or with noise)."""
    raw = _RecordingOps()
    variants = [{}] if op != "linear_softmax_fwd" else [{}, dict(targets=None), dict(
        targets=None, seed=None, noise=lambda a: torch.empty(5, 100, device="cuda"))]
    with FakeTensorMode():
        for device in ("cuda:0", "cuda:1"):
            for changes in variants:
                args = (_attention if op.startswith("thought") else _linear)(**changes)
                args = {name: x.to(device) if isinstance(x, torch.Tensor) else x for name, x in args.items()}
                assert _call(op, args, CheckedOps(raw)) == op
    assert raw.called == [op] * 2 * len(variants)
