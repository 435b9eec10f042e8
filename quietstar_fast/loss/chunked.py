"""Row-chunked LM-head loss in plain PyTorch: the "torch" backend, and the backward every backend shares.

Logits exist one chunk of rows at a time (a few MB on CPU, about 64 MB on a GPU), never as (N, V). The backward
asks the backend for a chunk's d loss / d logits G (recomputed from the saved log-sum-exp, in the same precision
as the backend's forward) and feeds two GEMMs: dH[chunk] = G @ W and dW += G^T @ H[chunk].

Why recompute in the backward rather than compute gradients in the forward (Liger's choice): a Quiet-STaR step
calls these ops T + N - 3 times (15 at the paper's defaults) before a single backward. Gradients computed in the
forward would have to live until then: one dW (V x D, 262 MB in bf16 at Mistral-7B's size) and one dH per call,
about 4 GB per step. Recomputing costs one more logits GEMM per backward (the backward does three instead of two)
and keeps nothing but the (N,) log-sum-exp. This is arithmetic, not yet a GPU measurement: bench_loss.py on a GPU
gives the time side of the trade. dW accumulates in W's dtype (as Liger's fused linear CE does);
on a GPU the chunks are large, so a 16-bit dW is rounded only a few times. For the one call whose loss is the last
op (the talk loss), ``chunked_loss_and_gradients`` does compute the gradients in the forward, from the chunk's own
logits (``weighted_mixed_cross_entropy``, ``QuietStar(talk_grad_in_forward=True)``).
"""
from __future__ import annotations

import torch

from .._platform import statistics_dtype
from .reference import BANNED_LOGIT

_CHUNK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 25}


def row_chunks(num_rows: int, vocab: int, device: torch.device):
    """Yield (r0, r1) row ranges whose logits hold about a chunk budget of elements."""
    budget = _CHUNK_ELEMENTS.get(device.type, _CHUNK_ELEMENTS["cuda"])
    step = max(1, budget // vocab)
    for r0 in range(0, num_rows, step):
        yield r0, min(num_rows, r0 + step)


def torch_forward(hidden, weight, targets, noise, generator, banned, inv_t, sample_scale):
    """Chunked statistics of z = hidden @ weight^T: (lse of z * inv_t, z[target or sample], sampled tokens or None).

    Sampling (``targets`` None) takes argmax(z * sample_scale + g), g from ``noise`` (N, V) or drawn per chunk as
    -log(Exp(1)) from ``generator``.
    """
    num_rows, vocab = hidden.shape[0], weight.shape[0]
    cdtype = statistics_dtype(hidden.dtype)
    lse = torch.empty(num_rows, dtype=cdtype, device=hidden.device)
    picked = torch.empty_like(lse)
    tokens = None if targets is not None else torch.empty(num_rows, dtype=torch.int64, device=hidden.device)
    for r0, r1 in row_chunks(num_rows, vocab, hidden.device):
        logits = (hidden[r0:r1] @ weight.T).to(cdtype)
        if banned is not None:
            logits.masked_fill_(banned.bool(), BANNED_LOGIT)
        lse[r0:r1] = torch.logsumexp(logits if inv_t == 1.0 else logits * inv_t, dim=-1)
        if tokens is None:
            chosen = targets[r0:r1].clamp(0, vocab - 1)  # ignored rows pick anything; their loss is zeroed
        else:
            if noise is not None:
                gumbel = noise[r0:r1].to(cdtype)
            else:
                gumbel = torch.empty_like(logits).exponential_(generator=generator).log_().neg_()
            chosen = (logits * sample_scale + gumbel).argmax(dim=-1)
            tokens[r0:r1] = chosen
        picked[r0:r1] = logits.gather(1, chosen[:, None]).squeeze(1)
    return lse, picked, tokens


def _logits(hidden: torch.Tensor, weight: torch.Tensor, banned) -> torch.Tensor:
    """z = hidden @ weight^T of a chunk of rows, in the statistics dtype, banned ids at BANNED_LOGIT."""
    z = (hidden @ weight.T).to(statistics_dtype(hidden.dtype))
    if banned is not None:
        z.masked_fill_(banned.bool(), BANNED_LOGIT)
    return z


def _grad_from_logits(z: torch.Tensor, lse, targets, coef, inv_t) -> torch.Tensor:
    """coef * inv_t * (softmax(z * inv_t) - onehot(targets)), computed in place in z's buffer."""
    scale = (coef * inv_t).to(z.dtype)
    if inv_t != 1.0:
        z.mul_(inv_t)
    grad = z.sub_(lse[:, None].to(z.dtype)).exp_().mul_(scale[:, None])  # in place: each pass is one over (C, V)
    # Minus the one-hot; an out-of-vocabulary (ignored) target subtracts 0 at column 0. No boolean indexing: that
    # would wait for the device (nonzero) inside the training step.
    in_vocab = (targets >= 0) & (targets < z.shape[1])
    grad.scatter_add_(1, targets.clamp(0, z.shape[1] - 1)[:, None], -(scale * in_vocab)[:, None])
    return grad


def torch_grad_logits(hidden, weight, lse, targets, coef, banned, inv_t):
    """G (C, V) = coef * inv_t * (softmax(z * inv_t) - onehot(targets)) for z = hidden @ weight^T, in hidden's dtype;
    the logits are formed exactly as ``torch_forward`` formed them."""
    return _grad_from_logits(_logits(hidden, weight, banned), lse, targets, coef, inv_t).to(hidden.dtype)


class _LinearGradients:
    """dH and dW of the LM head, one chunk of rows at a time: dH[rows] = G @ W and dW += G^T @ H[rows]; None for a
    gradient not needed (a frozen LM head skips its (V, D) GEMMs)."""

    def __init__(self, hidden, weight, need_hidden: bool, need_weight: bool):
        self.hidden, self.weight, self.need_weight = hidden, weight, need_weight
        self.grad_hidden = torch.empty_like(hidden) if need_hidden else None
        self.grad_weight = None  # the first chunk's GEMM allocates it: zero-filling (V, D) costs a pass over it

    def add(self, grad, r0: int, r1: int) -> None:
        if self.grad_hidden is not None:
            self.grad_hidden[r0:r1] = grad @ self.weight
        if not self.need_weight:
            return
        if self.grad_weight is None:
            self.grad_weight = grad.T @ self.hidden[r0:r1]
        else:
            self.grad_weight.addmm_(grad.T, self.hidden[r0:r1])

    def result(self):
        if self.need_weight and self.grad_weight is None:  # no rows
            self.grad_weight = torch.zeros_like(self.weight)
        return self.grad_hidden, self.grad_weight


def chunked_loss_and_gradients(hidden, weight, targets, coef, need_hidden=True, need_weight=True):
    """In one pass over the chunks of rows: (nll (N,), dH, dW) of the scalar sum_i coef_i * nll_i for
    nll_i = lse(z_i) - z_i[target_i], z = hidden @ weight^T, ``coef`` fixed (N,) (0 for ignored rows). The
    gradients come from the chunk's own logits, so there are three GEMMs instead of the four of a forward followed
    by a recomputing backward; they are exact for a loss that is a fixed linear function of the NLLs."""
    num_rows, vocab = hidden.shape[0], weight.shape[0]
    nll = torch.empty(num_rows, dtype=statistics_dtype(hidden.dtype), device=hidden.device)
    gradients = _LinearGradients(hidden, weight, need_hidden, need_weight)
    for r0, r1 in row_chunks(num_rows, vocab, hidden.device):
        z = _logits(hidden[r0:r1], weight, None)
        lse = torch.logsumexp(z, dim=-1)
        chosen = targets[r0:r1].clamp(0, vocab - 1)
        nll[r0:r1] = lse - z.gather(1, chosen[:, None]).squeeze(1)
        gradients.add(_grad_from_logits(z, lse, targets[r0:r1], coef[r0:r1], 1.0).to(hidden.dtype), r0, r1)
    return (nll, *gradients.result())


def chunked_linear_backward(hidden, weight, lse, targets, coef, banned, inv_t, grad_logits, need_hidden=True,
                            need_weight=True):
    """dH, dW of sum_i coef_i * (lse_i - inv_t * z_i[target_i]), one chunk of rows at a time; None for a gradient
    not needed (a frozen LM head skips its (V, D) GEMMs)."""
    gradients = _LinearGradients(hidden, weight, need_hidden, need_weight)
    for r0, r1 in row_chunks(hidden.shape[0], weight.shape[0], hidden.device):
        gradients.add(grad_logits(hidden[r0:r1], weight, lse[r0:r1], targets[r0:r1], coef[r0:r1], banned, inv_t),
                      r0, r1)
    return gradients.result()
