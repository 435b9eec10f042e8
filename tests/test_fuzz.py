"""Property-based tests (hypothesis): every public op and every backend this machine can run, on random shapes,
dtypes, padding patterns, windows and layouts, against the fp64 reference under FlashAttention's rule.

Profiles (QUIETSTAR_FUZZ_PROFILE): "ci" (default, a few hundred cases in all, a few minutes on 2 CPU cores) and
"long" (for GPU runs). The number of cases each test ran is printed at the end of the session (conftest.py).
Counterexamples found here are kept as fixed cases in the backend tests (see REGRESSIONS below).
"""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attention_cases import Case, Problem, run
from backends import every_backend
from quietstar_fast import mixed_cross_entropy, sample_thought_tokens
from tolerance import assert_fa_rule

PROFILE = os.environ.get("QUIETSTAR_FUZZ_PROFILE", "ci")
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("long", deadline=None, max_examples=1000, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(PROFILE)

# Examples per backend in the CI profile: the interpreted and emulated kernels are slow on CPU.
CI_EXAMPLES = {"torch": 100, "sdpa": 100, "triton": 40, "cuda": 40, "cuda-emulated": 40}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
CASE_COUNTS: dict[str, int] = {}


def _examples(backend: str) -> int:
    return CI_EXAMPLES[backend] if PROFILE == "ci" else settings.get_profile(PROFILE).max_examples


def _run_counted(name: str, check) -> None:
    """Runs a hypothesis test and fails if it ran no case at all."""
    before = CASE_COUNTS.get(name, 0)
    check()
    assert CASE_COUNTS.get(name, 0) > before, f"{name}: hypothesis ran no case"


def _count(name: str) -> None:
    CASE_COUNTS[name] = CASE_COUNTS.get(name, 0) + 1


# ---- thought attention ------------------------------------------------------------------------------------------

@st.composite
def attention_problems(draw, max_head_dim: int):
    kv_heads = draw(st.integers(1, 3))
    group = draw(st.integers(1, 3))
    n = draw(st.integers(1, 40))
    a = draw(st.integers(0, 4))
    m = draw(st.integers(1, a + 1))
    d = draw(st.sampled_from([d for d in (8, 16, 24, 40, 64, 80, 128) if d <= max_head_dim]))
    batch = draw(st.integers(1, 2))
    window = draw(st.one_of(st.none(), st.integers(1, n + 2)))
    case = Case(batch, kv_heads * group, kv_heads, n, a, m, d, None, window)
    padding = draw(st.sampled_from(["none", "right", "left", "holes", "one row fully padded"]))
    mask = None
    if padding != "none":
        mask = torch.tensor(draw(st.lists(st.lists(st.booleans(), min_size=n, max_size=n), min_size=batch,
                                          max_size=batch)), dtype=torch.bool)
        if padding in ("right", "left"):
            lengths = mask.sum(1)
            positions = torch.arange(n)[None, :]
            mask = positions < lengths[:, None] if padding == "right" else positions >= n - lengths[:, None]
        elif padding == "one row fully padded":
            mask[0] = False
        if not mask.any():  # an all-padding batch is the documented divergence from the official mask (test_mask)
            mask[-1, 0] = True
    dtype = draw(st.sampled_from(DTYPES))
    noncontiguous = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    return case, mask, dtype, noncontiguous, seed


def _attention_problem(case: Case, mask, dtype, noncontiguous: bool, seed: int) -> Problem:
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        x = torch.randn(*shape, generator=generator).to(dtype).to(DEVICE)
        # HF hands (B, H, T, d) views of (B, T, H, d) tensors.
        return x.transpose(1, 2).contiguous().transpose(1, 2) if noncontiguous and x.dim() == 4 else x

    q = randn(case.batch, case.q_heads, case.m * case.n, case.d)
    k = randn(case.batch, case.kv_heads, (case.a + 1) * case.n, case.d)
    v = randn(case.batch, case.kv_heads, (case.a + 1) * case.n, case.d)
    grad_out = randn(*q.shape)
    grad_lse = randn(case.batch, case.q_heads, case.m * case.n)
    return Problem(q, k, v, grad_out, grad_lse, None if mask is None else mask.to(DEVICE), case)


@pytest.mark.parametrize("backend", every_backend(attention=True))
def test_thought_attention_fuzz(backend, impl_for):
    impl = impl_for(backend)
    max_head_dim = 128 if impl == "cuda" else 256

    @settings(max_examples=_examples(backend))
    @given(attention_problems(max_head_dim))
    def check(drawn):
        case, mask, dtype, noncontiguous, seed = drawn
        problem = _attention_problem(case, mask, dtype, noncontiguous, seed)
        result, baseline = run(problem, impl), run(problem, "reference")
        oracle = run(problem.cast(torch.float64), "reference")
        for name in ("o", "lse", "dq", "dk", "dv"):
            assert_fa_rule(f"{backend} {case} mask={mask} {dtype} {name}", result[name], baseline[name],
                           oracle[name], torch.float32 if name == "lse" else dtype)
        _count(f"thought_attention[{backend}]")

    _run_counted(f"thought_attention[{backend}]", check)


# ---- LM-head ops ------------------------------------------------------------------------------------------------

@st.composite
def linear_problems(draw):
    rows = draw(st.integers(1, 50))
    hidden = draw(st.integers(1, 80))
    vocab = draw(st.integers(2, 700))
    dtype = draw(st.sampled_from(DTYPES))
    mix = draw(st.sampled_from([None, "random", "zero"]))
    ignored = draw(st.floats(0.0, 1.0))
    seed = draw(st.integers(0, 2**31 - 1))
    return rows, hidden, vocab, dtype, mix, ignored, seed


def _linear_inputs(rows, hidden, vocab, dtype, mix, ignored, seed):
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        "h_base": torch.randn(rows, hidden, generator=generator),
        "lm_head_weight": torch.randn(vocab, hidden, generator=generator) * 3 / hidden**0.5,
    }
    if mix is not None:
        tensors["h_thought"] = torch.randn(rows, hidden, generator=generator)
        tensors["mix_weight"] = torch.randn(rows, generator=generator) * (mix == "random")
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    targets[torch.rand(rows, generator=generator) < ignored] = -100
    return {k: v.to(dtype).to(DEVICE) for k, v in tensors.items()}, targets.to(DEVICE)


def _cross_entropy(tensors, targets, impl, dtype=None):
    leaves = {k: v.detach().to(dtype or v.dtype).requires_grad_(True) for k, v in tensors.items()}
    loss = mixed_cross_entropy(leaves["h_base"], leaves["lm_head_weight"], targets, h_thought=leaves.get("h_thought"),
                               mix_weight=leaves.get("mix_weight"), impl=impl)
    upstream = torch.linspace(-1, 2, len(loss), device=loss.device, dtype=torch.float64)
    grads = torch.autograd.grad((loss.double() * upstream).sum(), list(leaves.values()))
    return {"loss": loss.detach(), **{f"d_{k}": g for k, g in zip(leaves, grads)}}


@pytest.mark.parametrize("backend", every_backend())
def test_mixed_cross_entropy_fuzz(backend, impl_for):
    impl = impl_for(backend)

    @settings(max_examples=_examples(backend))
    @given(linear_problems())
    def check(drawn):
        tensors, targets = _linear_inputs(*drawn)
        dtype = drawn[3]
        result, baseline = _cross_entropy(tensors, targets, impl), _cross_entropy(tensors, targets, "reference")
        oracle = _cross_entropy(tensors, targets, "reference", torch.float64)
        # The fp32 loss is a log-sum-exp of logits rounded to the inputs' dtype: their rounding is its noise floor.
        rows = {k: v.double() for k, v in tensors.items()}
        mixed = rows["h_base"] if "h_thought" not in rows else (
            (1 - rows["mix_weight"][:, None]) * rows["h_base"] + rows["mix_weight"][:, None] * rows["h_thought"])
        logit_noise = 2 * torch.finfo(dtype).eps * float((mixed @ rows["lm_head_weight"].T).abs().max())
        for name in result:
            loss_like = name == "loss"
            assert_fa_rule(f"{backend} {drawn} {name}", result[name], baseline[name], oracle[name],
                           torch.float32 if loss_like else dtype, input_noise=logit_noise if loss_like else 0.0)
        # Ignored targets: loss 0 and no gradient into their rows, whatever else the row holds.
        ignored = targets == -100
        assert torch.all(result["loss"][ignored] == 0)
        assert torch.all(result["d_h_base"][ignored] == 0)
        _count(f"mixed_cross_entropy[{backend}]")

    _run_counted(f"mixed_cross_entropy[{backend}]", check)


@pytest.mark.parametrize("backend", every_backend())
def test_sample_thought_tokens_fuzz(backend, impl_for):
    impl = impl_for(backend)

    @settings(max_examples=_examples(backend))
    @given(linear_problems(), st.lists(st.integers(0, 1), min_size=0, max_size=3))
    def check(drawn, banned_choice):
        rows, hidden, vocab, dtype, _, _, seed = drawn
        tensors, _ = _linear_inputs(rows, hidden, vocab, torch.float32, None, 0.0, seed)
        h, weight = tensors["h_base"].to(dtype), tensors["lm_head_weight"].to(dtype)
        banned = sorted({0 if choice == 0 else vocab - 1 for choice in banned_choice})
        if len(banned) == vocab:
            banned = banned[:1]
        generator = torch.Generator(device=DEVICE).manual_seed(seed)
        noise = -torch.empty(rows, vocab, device=DEVICE).exponential_(generator=generator).log()
        tokens, logprob = sample_thought_tokens(h, weight, gumbel_noise=noise, banned_token_ids=banned, impl=impl)
        assert not torch.isin(tokens, torch.tensor(banned, dtype=torch.long, device=DEVICE)).any()
        # The sample is the argmax of z + g up to the inputs' rounding; its log-prob matches the fp64 one there.
        z = h.double() @ weight.double().T
        magnitude = float(z.abs().max().clamp(min=1.0))
        z[:, banned] = -1e10
        scores = z + noise.double()
        rounding = 8 * torch.finfo(dtype).eps * magnitude
        gap = scores.max(1).values - scores.gather(1, tokens[:, None]).squeeze(1)
        assert torch.all(gap <= rounding), f"{backend}: a token that is not the Gumbel-max"
        expected = torch.log_softmax(z / 3.0, -1).gather(1, tokens[:, None]).squeeze(1)
        tolerance = 16 * torch.finfo(dtype).eps * magnitude + 1e-5
        assert torch.allclose(logprob.double(), expected, rtol=0, atol=tolerance)
        _count(f"sample_thought_tokens[{backend}]")

    _run_counted(f"sample_thought_tokens[{backend}]", check)
