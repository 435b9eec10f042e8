"""impl="sdpa": the pinned private aten ops, how each mask is routed, exactness in fp64, and the log-sum-exp gradient.

The FA-rule comparisons of every case and dtype against the reference run in test_attention_backends.py, the fuzz,
robustness and compile tests in their own files; this file covers what is particular to this backend.
"""
import pytest
import torch
import torch.nn.functional as F

from attention_cases import OUTPUT_NAMES, Case, make_problem, run
from host_waits import HostWaits
from quietstar_fast import thought_attention
from quietstar_fast._platform import resolve_impl
from quietstar_fast.attention.checks import check_attention_call
from quietstar_fast.attention.fused_prefix import PINNED_SCHEMAS, fused_prefix_unsupported, schema_arguments
from quietstar_fast.attention.sdpa_impl import sdpa_fallback
from quietstar_fast.attention.sdpa_merge import prefix_plan
from quietstar_fast.mask import official_step_mask


@pytest.mark.parametrize("op_name", sorted(PINNED_SCHEMAS))
def test_private_ops_keep_the_pinned_signature(op_name):
    """These ops are internal API: a torch release that changes one must fail here, not give wrong numbers."""
    assert schema_arguments(op_name) == PINNED_SCHEMAS[op_name], (
        f"aten::{op_name} changed its signature in torch {torch.__version__}; update "
        f"quietstar_fast/attention/fused_prefix.py")


def _valid(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


@pytest.mark.parametrize("key_valid, window", [
    (None, 0),
    (_valid([[1, 1, 1, 1], [1, 1, 1, 1]]), 0),
    (_valid([[1, 1, 1, 0], [1, 1, 1, 1]]), 0),
    (_valid([[0, 0, 0, 0], [1, 1, 0, 0]]), 0),
    (_valid([[0, 1, 1, 1], [1, 1, 1, 1]]), 0),
    (_valid([[1, 0, 1, 1], [0, 0, 1, 0]]), 0),
    (None, 2),
    (_valid([[1, 1, 1, 0], [0, 1, 1, 1]]), 2),
], ids=lambda x: str(x).replace("\n", ""))
def test_prefix_plan_is_the_prefix_mask_and_reads_no_value(key_valid, window):
    """On CPU the causal kernel plus the plan's additive mask is the prefix part of ``quietstar_fast.mask``, built
    without a host wait; on CUDA padding and windows go to Triton, decided without looking at the mask either."""
    with HostWaits() as waits:
        plan = prefix_plan(key_valid, 4, window, torch.device("cpu"), torch.float32)
        cuda_plan = prefix_plan(key_valid, 4, window, torch.device("cuda"), torch.bfloat16)
    assert waits.ops == []
    expected = official_step_mask(4, 0, key_valid, window or None) == 0  # (B or 1, 1, 4, 4)
    causal = torch.ones(4, 4, dtype=torch.bool).tril()
    allowed = causal if plan.additive_mask is None else causal & (plan.additive_mask == 0)
    assert torch.equal(allowed.expand(expected.shape), expected)
    has_key = torch.ones(1, 1, 4, dtype=torch.bool) if plan.has_key is None else plan.has_key
    assert torch.equal(has_key.expand(expected.shape[:3]), expected.any(dim=-1))
    assert not plan.delegate and cuda_plan.delegate == (key_valid is not None or window > 0)


SDPA_CASES = [
    Case(2, 4, 2, 17, 3, 1, 64),
    Case(2, 4, 1, 19, 3, 4, 32, "right"),
    Case(2, 4, 2, 33, 2, 2, 64, "left"),
    Case(1, 2, 2, 40, 3, 3, 16, "holes", window=7),
    Case(2, 4, 4, 21, 0, 1, 24, "right"),
    Case(1, 3, 1, 23, 4, 5, 80, window=5),
]


@pytest.mark.parametrize("case", SDPA_CASES, ids=str)
def test_float64_matches_the_reference(case):
    problem = make_problem(case, torch.float64, "cpu")
    result, oracle = run(problem, "sdpa"), run(problem, "reference")
    for name in OUTPUT_NAMES:
        torch.testing.assert_close(result[name], oracle[name], rtol=1e-10, atol=1e-10, msg=name)


def test_fully_padded_and_right_padded_rows_together():
    """A row with no real token (its queries see nothing: o = 0, lse = -inf) next to a right-padded one, whose
    padded queries see every real key."""
    problem = make_problem(Case(3, 4, 2, 12, 2, 3, 16), torch.float64, "cpu")
    problem.mask = torch.arange(12)[None, :] < torch.tensor([[0], [5], [12]])
    result, oracle = run(problem, "sdpa"), run(problem, "reference")
    for name in OUTPUT_NAMES:
        torch.testing.assert_close(result[name], oracle[name], rtol=1e-10, atol=1e-10, msg=name)
    assert torch.all(result["o"][0] == 0) and torch.all(result["lse"][0] == float("-inf"))


@pytest.mark.parametrize("padding, window", [(None, None), ("right", None), ("left", 3)], ids=str)
def test_gradcheck_float64(padding, window):
    case = Case(2, 4, 2, 7, 2, 2, 8, padding, window=window)
    problem = make_problem(case, torch.float64, "cpu")

    def fn(q, k, v):
        out, lse = thought_attention(q, k, v, prefix_len=case.n, key_padding_mask=problem.mask,
                                     sliding_window=window, return_lse=True, impl="sdpa")
        return out, lse.masked_fill(torch.isinf(lse), 0.0)

    inputs = tuple(t.detach().clone().requires_grad_(True) for t in (problem.q, problem.k, problem.v))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("padding", [None, "right"])
def test_gradient_through_lse_alone(padding):
    """The fused backward ops take no lse gradient: the widened head-dim route must carry it exactly, also when
    the output itself takes none."""
    problem = make_problem(Case(2, 4, 2, 15, 3, 2, 32, padding), torch.float64, "cpu")
    grads = {}
    for impl in ("sdpa", "reference"):
        q, k, v = (t.detach().clone().requires_grad_(True) for t in (problem.q, problem.k, problem.v))
        _, lse = thought_attention(q, k, v, prefix_len=15, key_padding_mask=problem.mask, return_lse=True,
                                   impl=impl)
        grads[impl] = torch.autograd.grad((lse.masked_fill(lse.isinf(), 0) * problem.grad_lse).sum(), (q, k, v),
                                          allow_unused=True, materialize_grads=True)  # lse does not depend on v
    for got, want in zip(grads["sdpa"], grads["reference"]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert grads["sdpa"][0].abs().max() > 0


@pytest.mark.parametrize("stream_steps", [0, 2])
@pytest.mark.parametrize("padded", [False, True])
def test_the_custom_op_passes_opcheck_on_strided_queries(stream_steps, padded):
    """The fake kernels must give the real outputs' shapes and strides, for queries laid out as HF passes them
    ((B, H, T, d) views of (B, T, H, d)), or torch.compile's generated code rejects an output at run time."""
    from quietstar_fast.attention.sdpa_impl import thought_attention_bwd, thought_attention_fwd

    q = torch.randn(2, 16, 8, 32).transpose(1, 2).requires_grad_(True)
    k = torch.randn(2, 4, 16 * (stream_steps + 1), 32, requires_grad=True)
    v = torch.randn_like(k, requires_grad=True)
    valid = (torch.arange(16) < torch.tensor([[16], [11]])) if padded else None
    torch.library.opcheck(thought_attention_fwd, (q, k, v, valid, 16, 0, 0.2))
    out, lse, stream_probs = (x.detach() for x in thought_attention_fwd(q, k, v, valid, 16, 0, 0.2))
    grad_out = torch.randn(2, 16, 8, 32).transpose(1, 2)
    torch.library.opcheck(thought_attention_bwd, (q.detach(), k.detach(), v.detach(), out, lse, stream_probs, grad_out,
                                                  torch.randn_like(lse), valid, 16, 0, 0.2))


def test_plain_causal_call_is_public_sdpa():
    """No stream keys, no padding, no window and no lse requested: the public SDPA computes the whole op."""
    q = torch.randn(2, 4, 9, 16)
    k, v = torch.randn(2, 2, 9, 16), torch.randn(2, 2, 9, 16)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert torch.equal(thought_attention(q, k, v, prefix_len=9, impl="sdpa"), expected)


def test_what_the_fused_kernels_cannot_take_goes_elsewhere():
    cuda = torch.device("cuda")
    assert fused_prefix_unsupported(torch.device("cpu"), torch.float64, 7) is None
    assert "float16 and bfloat16" in fused_prefix_unsupported(cuda, torch.float32, 64)
    assert "multiples of 8" in fused_prefix_unsupported(cuda, torch.bfloat16, 60)
    assert "up to 248" in fused_prefix_unsupported(cuda, torch.bfloat16, 256)
    assert fused_prefix_unsupported(cuda, torch.bfloat16, 128) is None
    q, k = torch.randn(1, 2, 8, 64), torch.randn(1, 1, 16, 64)
    call = check_attention_call(q, k, k, 8, None, None, None)
    assert sdpa_fallback(call, torch.device("cpu"), torch.float32) is None
    assert sdpa_fallback(call, cuda, torch.float32) == "triton"
    assert sdpa_fallback(call, cuda, torch.float64) == "torch"


def test_auto_picks_sdpa_for_cpu_attention_where_it_was_measured_faster():
    x = torch.zeros(1)
    assert resolve_impl("auto", x, attention=True, prefix_len=64) == "sdpa"
    assert resolve_impl("auto", x.bfloat16(), attention=True, prefix_len=64) == "sdpa"
    assert resolve_impl("auto", x.half(), attention=True, prefix_len=128) == "torch"
    assert resolve_impl("auto", x.half(), attention=True, prefix_len=256) == "sdpa"
    assert resolve_impl("auto", x.double(), attention=True, prefix_len=256) == "torch"
    assert resolve_impl("auto", x) == "torch"
    with pytest.raises(ValueError, match="impl must be one of"):
        resolve_impl("sdpa", x)
