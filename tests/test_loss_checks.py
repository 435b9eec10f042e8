"""Bad input to the LM-head ops gets a clear error naming the argument."""
import pytest
import torch

from quietstar_fast import mixed_cross_entropy, sample_thought_tokens

N, D, V = 6, 8, 20


def _ce(**overrides):
    args = dict(h_base=torch.randn(N, D), lm_head_weight=torch.randn(V, D), targets=torch.randint(0, V, (N,)))
    args.update(overrides)
    return mixed_cross_entropy(args.pop("h_base"), args.pop("lm_head_weight"), args.pop("targets"), **args)


def _sample(**overrides):
    args = dict(hidden=torch.randn(N, D), lm_head_weight=torch.randn(V, D))
    args.update(overrides)
    return sample_thought_tokens(args.pop("hidden"), args.pop("lm_head_weight"), **args)


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        (dict(h_base=torch.randn(N, D, 1)), ValueError, "h_base must be 2-D"),
        (dict(h_base=torch.randn(N, D).int()), TypeError, "h_base has dtype"),
        (dict(lm_head_weight=torch.randn(V, D + 1)), ValueError, "lm_head_weight has hidden size"),
        (dict(lm_head_weight=torch.randn(V, D).double()), TypeError, "lm_head_weight has dtype"),
        (dict(lm_head_weight=torch.randn(V, D, device="meta")), ValueError, "lm_head_weight is on meta"),
        (dict(targets=torch.randint(0, V, (N + 1,))), ValueError, "targets must have shape"),
        (dict(targets=torch.full((N,), V)), ValueError, r"targets must lie in \[0, 20\)"),
        (dict(targets=torch.full((N,), -1)), ValueError, "or equal ignore_index=-100; found -1"),
        (dict(targets=torch.zeros(N)), TypeError, "targets must be int64 or int32"),
        (dict(h_thought=torch.randn(N, D)), ValueError, "must be given together"),
        (dict(h_thought=torch.randn(N, D + 1), mix_weight=torch.randn(N)), ValueError, "h_thought must have shape"),
        (dict(h_thought=torch.randn(N, D), mix_weight=torch.randn(N, 2)), ValueError, "mix_weight must have shape"),
        (dict(h_thought=torch.randn(N, D), mix_weight=torch.randn(N).double()), TypeError, "mix_weight has dtype"),
        (dict(ignore_index=1.5), TypeError, "ignore_index must be an int"),
        (dict(impl="fast"), ValueError, "impl must be one of"),
    ],
)
def test_mixed_cross_entropy_errors(overrides, error, match):
    with pytest.raises(error, match=match):
        _ce(**overrides)


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        (dict(hidden=torch.randn(N)), ValueError, "hidden must be 2-D"),
        (dict(gumbel_noise=torch.randn(N, V - 1)), ValueError, "gumbel_noise must have shape"),
        (dict(gumbel_noise=torch.randint(0, 3, (N, V))), TypeError, "gumbel_noise must be floating point"),
        (dict(banned_token_ids=[V]), ValueError, r"banned_token_ids must lie in \[0, 20\)"),
        (dict(banned_token_ids=[-1]), ValueError, "banned_token_ids must lie in"),
        (dict(banned_token_ids=list(range(V))), ValueError, "bans the whole vocabulary"),
        (dict(policy_temperature=0.0), ValueError, "policy_temperature must be a positive finite number"),
        (dict(sample_temperature=float("inf")), ValueError, "sample_temperature must be a positive finite"),
        (dict(generator=123), TypeError, "generator must be a torch.Generator"),
    ],
)
def test_sample_thought_tokens_errors(overrides, error, match):
    with pytest.raises(error, match=match):
        _sample(**overrides)


def test_triton_refuses_float64(device):
    hidden, weight = torch.randn(N, D, device=device).double(), torch.randn(V, D, device=device).double()
    with pytest.raises(TypeError, match="use impl='torch' for float64"):
        sample_thought_tokens(hidden, weight, impl="triton")
