"""Shared problem generators for the LM-head op tests (and the GPU smoke check): inputs, one fwd+bwd run, and the
(result, same-precision baseline, fp64 oracle) triples that FlashAttention's tolerance rule compares."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from quietstar_fast import mixed_cross_entropy, sample_thought_tokens
from quietstar_fast.loss.reference import banned_logit
from tolerance import Comparison


@dataclass(frozen=True)
class LossCase:
    rows: int
    hidden: int
    vocab: int
    mix: str | None  # None (base CE), "zero", "negative", "above_one", "random"
    ignored: float = 0.0  # fraction of ignore_index targets

    def __str__(self) -> str:
        return f"N{self.rows}-D{self.hidden}-V{self.vocab}-mix{self.mix}-ign{self.ignored}"


def _mix_weight(case: LossCase, device) -> torch.Tensor:
    n = case.rows
    if case.mix == "zero":
        return torch.zeros(n, device=device)
    if case.mix == "negative":
        return -torch.rand(n, device=device) - 0.5
    if case.mix == "above_one":
        return 1 + torch.rand(n, device=device)
    return torch.randn(n, device=device)


def make_ce_inputs(case: LossCase, dtype, device):
    """({h_base, lm_head_weight[, h_thought, mix_weight]} in ``dtype``, targets with ~``case.ignored`` -100s)."""
    h_base = torch.randn(case.rows, case.hidden, device=device)
    weight = torch.randn(case.vocab, case.hidden, device=device) / case.hidden**0.5 * 3
    targets = torch.randint(0, case.vocab, (case.rows,), device=device)
    targets[torch.rand(case.rows, device=device) < case.ignored] = -100
    tensors = {"h_base": h_base, "lm_head_weight": weight}
    if case.mix is not None:
        tensors["h_thought"] = torch.randn(case.rows, case.hidden, device=device)
        tensors["mix_weight"] = _mix_weight(case, device)
    return {k: v.to(dtype) for k, v in tensors.items()}, targets


def run_ce(tensors, targets, impl, dtype=None):
    """Forward + backward of a weighted sum of the losses; returns loss, lse and d_<input> for every input."""
    leaves = {k: v.detach().to(dtype or v.dtype).requires_grad_(True) for k, v in tensors.items()}
    loss, lse = mixed_cross_entropy(leaves["h_base"], leaves["lm_head_weight"], targets,
                                    h_thought=leaves.get("h_thought"), mix_weight=leaves.get("mix_weight"),
                                    return_lse=True, impl=impl)
    upstream = torch.linspace(-1, 2, len(loss), device=loss.device, dtype=torch.float64)
    grads = torch.autograd.grad((loss.double() * upstream).sum(), list(leaves.values()))
    return {"loss": loss.detach(), "lse": lse.detach(), **{f"d_{k}": g for k, g in zip(leaves, grads)}}


def ce_comparisons(case: LossCase, dtype: torch.dtype, impl: str, device) -> tuple[list[Comparison], torch.Tensor]:
    """Every output of ``mixed_cross_entropy`` through ``impl`` against the reference; also returns the loss rows of
    ignored targets (which must be exactly 0)."""
    tensors, targets = make_ce_inputs(case, dtype, device)
    result = run_ce(tensors, targets, impl)
    baseline = run_ce(tensors, targets, "reference")
    oracle = run_ce(tensors, targets, "reference", torch.float64)
    comparisons = [
        # loss and lse are fp32 statistics in every backend
        Comparison(name, result[name], baseline[name], oracle[name],
                   torch.float32 if name in ("loss", "lse") else dtype)
        for name in result
    ]
    return comparisons, result["loss"][targets == -100]


def make_sample_inputs(rows, hidden, vocab, dtype, device):
    """(hidden, weight, Gumbel noise), all in ``dtype``."""
    h = torch.randn(rows, hidden, device=device)
    weight = torch.randn(vocab, hidden, device=device) / hidden**0.5 * 3
    noise = -torch.empty(rows, vocab, device=device).exponential_().log()
    return h.to(dtype), weight.to(dtype), noise.to(dtype)


def run_sample(h, weight, noise, impl, banned, dtype=None, rows=None):
    """Tokens and (logprob, gradients); ``rows`` (bool) restricts the upstream gradient to those rows."""
    h = h.detach().to(dtype or h.dtype).requires_grad_(True)
    weight = weight.detach().to(dtype or weight.dtype).requires_grad_(True)
    tokens, logprob = sample_thought_tokens(h, weight, gumbel_noise=noise.to(dtype or noise.dtype),
                                            banned_token_ids=banned, impl=impl)
    upstream = torch.linspace(-1, 1, len(logprob), device=logprob.device, dtype=torch.float64)
    if rows is not None:
        upstream = upstream * rows
        logprob = logprob.masked_fill(~rows, 0.0)
    d_h, d_w = torch.autograd.grad((logprob.double() * upstream).sum(), (h, weight))
    return tokens, {"logprob": logprob.detach(), "d_hidden": d_h, "d_weight": d_w}


def same_precision_logprob(h, weight, tokens, banned, rows, temperature=3.0):
    """Baseline: the official computation in the inputs' dtype, at the oracle's tokens."""
    h = h.detach().requires_grad_(True)
    weight = weight.detach().requires_grad_(True)
    logits = (h @ weight.T).index_fill(1, torch.tensor(banned, device=h.device), banned_logit(h.dtype))
    logprob = torch.log_softmax(logits / temperature, dim=-1).gather(1, tokens[:, None]).squeeze(1).float()
    logprob = logprob.masked_fill(~rows, 0.0)
    upstream = torch.linspace(-1, 1, len(logprob), device=logprob.device, dtype=torch.float64) * rows
    d_h, d_w = torch.autograd.grad((logprob.double() * upstream).sum(), (h, weight))
    return {"logprob": logprob.detach(), "d_hidden": d_h, "d_weight": d_w}


@dataclass
class SampleCheck:
    """Sampled tokens against the fp64 oracle's, with the same noise."""
    tokens: torch.Tensor
    oracle_tokens: torch.Tensor
    max_gap: float  # largest oracle-score gap between the oracle's token and the sampled one
    tie_rounding: float  # gaps up to this are near-ties that 16-bit logits may break either way
    comparisons: list[Comparison]  # logprob and gradients on the rows that sampled the oracle's token

    @property
    def match_fraction(self) -> float:
        return float((self.tokens == self.oracle_tokens).float().mean())


def sample_check(shape: tuple[int, int, int], dtype: torch.dtype, impl: str, device) -> SampleCheck:
    h, weight, noise = make_sample_inputs(*shape, dtype, device)
    banned = [0, shape[2] - 1]
    tokens, _ = run_sample(h, weight, noise, impl, banned)
    oracle_tokens, _ = run_sample(h, weight, noise, "reference", banned, torch.float64)
    # Same noise, same sample, except at near-ties: the torch path forms 16-bit logits like the official code, so a
    # different token is allowed only where the oracle's scores of the two tokens differ by less than that rounding.
    logits = h.double() @ weight.double().T
    scores = logits + noise.double()
    rounding = 4 * torch.finfo(dtype).eps * float(logits.abs().max())
    gap = scores.gather(1, oracle_tokens[:, None]) - scores.gather(1, tokens[:, None])
    same = tokens == oracle_tokens
    _, result = run_sample(h, weight, noise, impl, banned, rows=same)
    _, oracle = run_sample(h, weight, noise, "reference", banned, torch.float64, rows=same)
    baseline = same_precision_logprob(h, weight, oracle_tokens, banned, same)
    comparisons = [Comparison(name, result[name], baseline[name], oracle[name],
                              torch.float32 if name == "logprob" else dtype) for name in result]
    return SampleCheck(tokens, oracle_tokens, float(gap.max()), rounding, comparisons)
