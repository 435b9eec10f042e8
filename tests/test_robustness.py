"""Behaviour at the edges, on every backend this machine runs: non-finite inputs, bitwise-deterministic backward
passes, and element offsets past 2**31 (README, "Guarantees").
"""
import pytest
import torch

from attention_cases import Case, make_problem, run
from backends import every_backend
from quietstar_fast import mixed_cross_entropy, thought_attention


def _device_for(backend: str) -> str:
    return "cpu" if backend == "cuda-emulated" else ("cuda" if torch.cuda.is_available() else "cpu")


def _attention_inputs(device, n=20, a=1, d=32):
    q = torch.randn(1, 2, n, d, device=device)
    k = torch.randn(1, 1, (a + 1) * n, d, device=device)
    return q, k, torch.randn_like(k)


# ---- non-finite inputs ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", every_backend(attention=True))
def test_nan_in_a_query_reaches_its_own_row_only(backend, impl_for):
    impl, device = impl_for(backend), _device_for(backend)
    q, k, v = _attention_inputs(device)
    q[0, 0, 5] = float("nan")
    out, lse = thought_attention(q, k, v, prefix_len=20, return_lse=True, impl=impl)
    assert torch.isnan(out[0, 0, 5]).all() and torch.isnan(lse[0, 0, 5])
    others = torch.ones(2, 20, dtype=torch.bool)
    others[0, 5] = False
    assert torch.isfinite(out[0][others]).all()


@pytest.mark.parametrize("backend", every_backend(attention=True))
def test_nan_in_a_key_reaches_the_rows_that_see_it(backend, impl_for):
    """Rows that see key j become NaN; rows that do not see it stay finite (masked scores are replaced, not
    multiplied). A NaN in v may also reach rows of the same tile that do not see it (0 * NaN), as in SDPA."""
    impl, device = impl_for(backend), _device_for(backend)
    q, k, v = _attention_inputs(device)
    k[0, 0, 10] = float("nan")  # prefix key 10: visible to positions 10..19
    out = thought_attention(q, k, v, prefix_len=20, impl=impl)
    assert torch.isnan(out[0, :, 10:]).all()
    assert torch.isfinite(out[0, :, :10]).all()
    v[0, 0, 10], k[0, 0, 10] = float("nan"), 1.0
    assert torch.isnan(thought_attention(q, k, v, prefix_len=20, impl=impl)[0, :, 10:]).all()


@pytest.mark.parametrize("backend", every_backend(attention=True))
def test_rows_that_see_nothing_give_zeros_not_nan(backend, impl_for):
    impl, device = impl_for(backend), _device_for(backend)
    q, k, v = (x.requires_grad_(True) for x in _attention_inputs(device))
    valid = torch.ones(1, 20, dtype=torch.bool, device=device)
    valid[0, :4] = False  # left padding: positions 0..3 see no key, not even their own stream keys
    out, lse = thought_attention(q, k, v, prefix_len=20, key_padding_mask=valid, return_lse=True, impl=impl)
    assert torch.all(out[0, :, :4] == 0) and torch.all(lse[0, :, :4] == float("-inf"))
    grads = torch.autograd.grad(out.sum() + lse.masked_fill(lse.isinf(), 0).sum(), (q, k, v))
    assert all(torch.isfinite(g).all() for g in grads)
    assert torch.all(grads[0][0, :, :4] == 0)


@pytest.mark.parametrize("backend", every_backend())
def test_nan_hidden_state_reaches_its_own_loss_only(backend, impl_for):
    impl, device = impl_for(backend), _device_for(backend)
    h, w = torch.randn(9, 16, device=device), torch.randn(300, 16, device=device)
    targets = torch.randint(0, 300, (9,), device=device)
    h[4] = float("nan")
    loss = mixed_cross_entropy(h, w, targets, impl=impl)
    assert torch.isnan(loss[4]) and torch.isfinite(loss[torch.arange(9, device=device) != 4]).all()


@pytest.mark.parametrize("backend", every_backend())
def test_all_ignored_targets_give_zero_loss_and_gradients(backend, impl_for):
    impl, device = impl_for(backend), _device_for(backend)
    h = torch.randn(7, 16, device=device, requires_grad=True)
    w = torch.randn(300, 16, device=device, requires_grad=True)
    loss = mixed_cross_entropy(h, w, torch.full((7,), -100, device=device), impl=impl)
    grads = torch.autograd.grad(loss.sum(), (h, w))
    assert torch.all(loss == 0) and all(torch.all(g == 0) for g in grads)


# ---- determinism ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", every_backend(attention=True))
@pytest.mark.parametrize("padding, window", [("right", 9), ("right", None), (None, None)], ids=str)
def test_attention_backward_is_bitwise_deterministic(backend, padding, window, impl_for):
    """No backend accumulates with atomics, so two runs give identical bits (no deterministic= switch needed)."""
    impl, device = impl_for(backend), _device_for(backend)
    problem = make_problem(Case(2, 4, 2, 37, 3, 2, 64, padding, window=window), torch.bfloat16, device)
    first, second = run(problem, impl), run(problem, impl)
    for name in first:
        assert torch.equal(first[name], second[name]), name


@pytest.mark.parametrize("backend", every_backend())
def test_lm_head_backward_is_bitwise_deterministic(backend, impl_for):
    impl, device = impl_for(backend), _device_for(backend)
    h = torch.randn(40, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(1000, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, 1000, (40,), device=device)

    def grads():
        return torch.autograd.grad(mixed_cross_entropy(h, w, targets, impl=impl).sum(), (h, w))

    assert all(torch.equal(x, y) for x, y in zip(grads(), grads()))


# ---- offsets past 2**31 -----------------------------------------------------------------------------------------

def _huge_offset_backends():
    """The interpreter copies whole storages back after each launch, so on CPU Triton is covered by the GPU run."""
    return [b for b in every_backend(attention=True) if torch.cuda.is_available() or b.values[0] != "triton"]


@pytest.mark.parametrize("backend", _huge_offset_backends())
def test_offsets_past_2_31_elements(backend, impl_for):
    """q's second batch row starts 2**31 elements into its storage: 32-bit offsets would wrap and read elsewhere.
    The storage is allocated but only the touched pages become resident on CPU."""
    impl, device = impl_for(backend), _device_for(backend)
    n, d = 24, 64
    storage = torch.empty(2**31 + 2 * n * d, dtype=torch.float16, device=device)
    q = storage.as_strided((2, 1, n, d), (2**31, n * d, d, 1))
    q.copy_(torch.randn(2, 1, n, d, device=device))
    k = torch.randn(2, 1, 3 * n, d, device=device, dtype=torch.float16)
    v = torch.randn_like(k)
    grad_out = torch.randn(2, 1, n, d, device=device, dtype=torch.float16)
    results = {}
    for name, query in (("strided", q), ("contiguous", q.contiguous())):
        leaf = query.detach().requires_grad_(True)
        out = thought_attention(leaf, k, v, prefix_len=n, impl=impl)
        results[name] = (out, *torch.autograd.grad(out, leaf, grad_out))
    del storage, q
    for strided, contiguous in zip(results["strided"], results["contiguous"]):
        assert torch.equal(strided, contiguous)
