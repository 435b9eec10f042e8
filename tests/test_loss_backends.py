"""LM-head ops ("torch", "triton", "cuda") against the full-logits reference: losses, log-probs, tokens, every gradient.

Tolerances follow FlashAttention's rule (tests/tolerance.py): the fp64 reference from the same rounded inputs is
the oracle, the same-precision reference is the baseline.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from quietstar_fast import mixed_cross_entropy, sample_thought_tokens
from quietstar_fast.loss import chunked
from backends import KERNEL_IMPLS
from loss_cases import LossCase, ce_comparisons, make_ce_inputs, make_sample_inputs, run_ce, sample_check
from tolerance import assert_fa_rule, assert_rule

IMPLS = ["torch", *KERNEL_IMPLS]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


CE_CASES = [
    LossCase(37, 64, 1000, None, 0.2),
    LossCase(37, 64, 4099, "random", 0.1),
    LossCase(61, 32, 1000, "zero"),
    LossCase(23, 48, 4099, "negative", 0.3),
    LossCase(16, 64, 1000, "above_one"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CE_CASES, ids=str)
@pytest.mark.parametrize("impl", IMPLS)
def test_mixed_cross_entropy_matches_reference(impl, case, dtype, device):
    comparisons, ignored_losses = ce_comparisons(case, dtype, impl, device)
    for comparison in comparisons:
        assert_rule(comparison, f"{impl} {case} {dtype}")
    assert torch.equal(ignored_losses, torch.zeros_like(ignored_losses))


@pytest.mark.parametrize("impl", IMPLS)
def test_ignored_rows_get_no_gradient(impl, device):
    tensors, targets = make_ce_inputs(LossCase(20, 32, 1000, "random"), torch.float32, device)
    targets[:10] = -100
    grads = run_ce(tensors, targets, impl)
    for name in ("d_h_base", "d_h_thought", "d_mix_weight"):
        assert torch.count_nonzero(grads[name][:10]) == 0, (impl, name)


class _ShapesMade(TorchDispatchMode):
    """Records the shape of every new (non-view) tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.shapes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(item, torch.Tensor) and not item._is_view():
                self.shapes.add(tuple(item.shape))
        return out


@pytest.mark.parametrize("frozen", ["lm_head_weight", "h_base"])
@pytest.mark.parametrize("impl", IMPLS)
def test_frozen_input_gets_no_gradient_and_the_other_is_unchanged(impl, frozen, device, monkeypatch):
    """A frozen LM head (LoRA-style training) or frozen hidden states: the backward computes only the gradient asked
    for (no tensor of the frozen one's shape is made), bit for bit the one a full backward gives."""
    case = LossCase(37, 32, 1000, None)
    for device_type in ("cpu", "cuda"):  # 16-row chunks: the backward's first-chunk / later-chunk paths both run
        monkeypatch.setitem(chunked._CHUNK_ELEMENTS, device_type, 16 * case.vocab)
    tensors, targets = make_ce_inputs(case, torch.float32, device)
    full = run_ce(tensors, targets, impl)
    leaves = {k: v.detach().requires_grad_(k != frozen) for k, v in tensors.items()}
    loss = mixed_cross_entropy(leaves["h_base"], leaves["lm_head_weight"], targets, impl=impl)
    trainable = "h_base" if frozen == "lm_head_weight" else "lm_head_weight"
    upstream = torch.linspace(-1, 2, len(loss), device=loss.device, dtype=torch.float64)  # as run_ce
    with _ShapesMade() as made:
        (grad,) = torch.autograd.grad((loss.double() * upstream).sum(), [leaves[trainable]])
    torch.testing.assert_close(grad, full[f"d_{trainable}"], rtol=0, atol=0)
    baseline, oracle = run_ce(tensors, targets, "reference"), run_ce(tensors, targets, "reference", torch.float64)
    assert_fa_rule(f"{impl} chunked d_{trainable}", grad, baseline[f"d_{trainable}"], oracle[f"d_{trainable}"],
                   torch.float32)
    assert tuple(tensors[frozen].shape) not in made.shapes


@pytest.mark.parametrize("impl", IMPLS)
def test_zero_mix_weight_is_the_base_loss(impl, device):
    tensors, targets = make_ce_inputs(LossCase(17, 32, 1000, "zero"), torch.float32, device)
    mixed = mixed_cross_entropy(tensors["h_base"], tensors["lm_head_weight"], targets,
                                h_thought=tensors["h_thought"], mix_weight=tensors["mix_weight"], impl=impl)
    base = mixed_cross_entropy(tensors["h_base"], tensors["lm_head_weight"], targets, impl=impl)
    torch.testing.assert_close(mixed, base, rtol=0, atol=0)


def test_torch_gradcheck_float64(device):
    case = LossCase(5, 6, 11, "random", 0.2)
    tensors, targets = make_ce_inputs(case, torch.float64, device)
    names = list(tensors)

    def ce(*args):
        kw = dict(zip(names, args))
        return mixed_cross_entropy(kw["h_base"], kw["lm_head_weight"], targets, h_thought=kw["h_thought"],
                                   mix_weight=kw["mix_weight"], impl="torch")

    assert torch.autograd.gradcheck(ce, tuple(t.requires_grad_(True) for t in tensors.values()))
    hidden = tensors["h_base"].detach().requires_grad_(True)
    weight = tensors["lm_head_weight"].detach().requires_grad_(True)
    noise = -torch.empty(case.rows, case.vocab, dtype=torch.float64, device=device).exponential_().log()

    def logprob(h, w):
        return sample_thought_tokens(h, w, gumbel_noise=noise, banned_token_ids=[2], impl="torch")[1]

    assert torch.autograd.gradcheck(logprob, (hidden, weight))


# ---- sampling ---------------------------------------------------------------------------------------------------

SAMPLE_CASES = [(37, 64, 1000), (29, 48, 4099)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SAMPLE_CASES, ids=str)
@pytest.mark.parametrize("impl", IMPLS)
def test_sampling_with_given_noise_matches_reference(impl, shape, dtype, device):
    check = sample_check(shape, dtype, impl, device)
    assert check.max_gap <= check.tie_rounding, "a token was sampled that is not a near-tie of the oracle's"
    assert check.match_fraction > 0.9
    if dtype == torch.float32:
        assert torch.equal(check.tokens, check.oracle_tokens)
    for comparison in check.comparisons:
        assert_rule(comparison, f"{impl} {shape} {dtype}")


@pytest.mark.parametrize("impl", IMPLS)
def test_banned_ids_are_never_sampled(impl, device):
    rows, hidden, vocab = 64, 16, 300
    direction = torch.randn(hidden, device=device)
    h = direction + 0.1 * torch.randn(rows, hidden, device=device)
    weight = torch.randn(vocab, hidden, device=device) * 0.01
    banned = [7, 299]
    weight[banned] = direction  # logits near |direction|^2 ~ 16 against ~0: without the ban they win every row
    generator = torch.Generator(device=device).manual_seed(0)
    tokens, _ = sample_thought_tokens(h, weight, generator=generator, banned_token_ids=banned, impl=impl)
    assert not torch.isin(tokens, torch.tensor(banned, device=device)).any()
    unbanned, _ = sample_thought_tokens(h, weight, generator=generator, impl=impl)
    assert torch.isin(unbanned, torch.tensor(banned, device=device)).float().mean() > 0.9


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("sample_temperature", [None, 2.0])
def test_generated_noise_samples_the_right_distribution(impl, sample_temperature, device):
    """Frequencies over many rows match softmax(z / T) (T = 1 when sample_temperature is None)."""
    rows, vocab = 6000, 6
    weight = torch.tensor([[2.0], [1.0], [0.5], [0.0], [-1.0], [1.5]], device=device)
    h = torch.ones(rows, 1, device=device)
    generator = torch.Generator(device=device).manual_seed(1234)
    tokens, logprob = sample_thought_tokens(h, weight, generator=generator, impl=impl,
                                            sample_temperature=sample_temperature)
    expected = torch.softmax(weight[:, 0] / (sample_temperature or 1.0), dim=0)
    observed = torch.bincount(tokens, minlength=vocab).float() / rows
    # 5 standard errors of a binomial proportion.
    tolerance = 5 * torch.sqrt(expected * (1 - expected) / rows)
    assert torch.all((observed - expected).abs() < tolerance), (observed, expected)
    torch.testing.assert_close(logprob, torch.log_softmax(weight[:, 0] / 3.0, 0)[tokens], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_generator_seeds_are_reproducible(impl, device):
    h, weight, _ = make_sample_inputs(50, 16, 500, torch.float32, device)

    def draw(seed):
        generator = torch.Generator(device=device).manual_seed(seed)
        return sample_thought_tokens(h, weight, generator=generator, impl=impl)[0]

    assert torch.equal(draw(5), draw(5))
    assert not torch.equal(draw(5), draw(6))
