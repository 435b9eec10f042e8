"""weighted_mixed_cross_entropy: the talk loss with its gradients computed in the forward (one pass over the
vocabulary, three GEMMs), against the reference's sum of weighted per-token losses under FlashAttention's rule, for
the shared LM-head cases (mixing weights zero, negative and above one, ignored targets) in fp32, fp16 and bf16."""
import pytest
import torch

from loss_cases import LossCase, make_ce_inputs
from quietstar_fast import mixed_cross_entropy, weighted_mixed_cross_entropy
from test_loss_backends import CE_CASES, DTYPES
from tolerance import Comparison, assert_rule


def _row_weights(case: LossCase, device) -> torch.Tensor:
    return torch.linspace(-1, 2, case.rows, device=device)


def _run(tensors, targets, row_weights, weighted: bool, dtype=None, upstream: float = 1.0):
    """(total, per-token loss, the gradient of every input) of upstream * sum_i row_weights_i * CE_i."""
    leaves = {k: v.detach().to(dtype or v.dtype).requires_grad_(True) for k, v in tensors.items()}
    args = (leaves["h_base"], leaves["lm_head_weight"], targets)
    extra = dict(h_thought=leaves.get("h_thought"), mix_weight=leaves.get("mix_weight"))
    if weighted:
        total, loss = weighted_mixed_cross_entropy(*args, row_weights.to(dtype or row_weights.dtype), **extra)
    else:
        loss = mixed_cross_entropy(*args, impl="reference", **extra)
        total = (loss * row_weights.to(loss.dtype)).sum()
    grads = torch.autograd.grad(total * upstream, list(leaves.values()))
    return {"total": total.detach(), "loss": loss.detach(), **{f"d_{k}": g for k, g in zip(leaves, grads)}}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CE_CASES, ids=str)
def test_matches_the_reference(case, dtype, device):
    tensors, targets = make_ce_inputs(case, dtype, device)
    row_weights = _row_weights(case, device)
    result = _run(tensors, targets, row_weights, weighted=True)
    baseline = _run(tensors, targets, row_weights, weighted=False)
    oracle = _run(tensors, targets, row_weights, weighted=False, dtype=torch.float64)
    for name in (name for name in result if name != "total"):
        # loss: an fp32 statistic in every backend; the total is its weighted sum (checked below), whose error a
        # max-error rule cannot bound: the baseline's per-token errors can cancel in a sum of 16 rows (measured:
        # 6.6e-5 against a per-token 7.1e-3 in fp16).
        assert_rule(Comparison(name, result[name], baseline[name], oracle[name],
                               torch.float32 if name == "loss" else dtype), f"{case} {dtype}")
    weights = row_weights.masked_fill(targets == -100, 0.0)
    torch.testing.assert_close(result["total"], (weights * result["loss"]).sum())
    assert torch.all(result["loss"][targets == -100] == 0)


def test_float64_is_exact_and_the_backward_scales_by_the_upstream_gradient():
    case = LossCase(29, 16, 300, "random", 0.2)
    tensors, targets = make_ce_inputs(case, torch.float64, "cpu")
    row_weights = _row_weights(case, "cpu").double()
    for upstream in (1.0, -2.5):
        result = _run(tensors, targets, row_weights, weighted=True, upstream=upstream)
        oracle = _run(tensors, targets, row_weights, weighted=False, upstream=upstream)
        for name in result:
            torch.testing.assert_close(result[name], oracle[name], rtol=1e-12, atol=1e-12, msg=name)


def test_a_frozen_lm_head_gets_no_gradient():
    case = LossCase(11, 8, 50, None, 0.0)
    tensors, targets = make_ce_inputs(case, torch.float32, "cpu")
    h_base = tensors["h_base"].requires_grad_(True)
    total, _ = weighted_mixed_cross_entropy(h_base, tensors["lm_head_weight"], targets, torch.ones(11))
    total.backward()
    assert h_base.grad is not None and tensors["lm_head_weight"].grad is None


def test_bad_row_weights_are_refused():
    tensors, targets = make_ce_inputs(LossCase(5, 8, 20, None), torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"row_weights must have shape \(5,\)"):
        weighted_mixed_cross_entropy(tensors["h_base"], tensors["lm_head_weight"], targets, torch.ones(4))
    with pytest.raises(TypeError, match="row_weights must be a floating-point tensor"):
        weighted_mixed_cross_entropy(tensors["h_base"], tensors["lm_head_weight"], targets,
                                     torch.ones(5, dtype=torch.long))
