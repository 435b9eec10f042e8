"""The fast Quiet-STaR training call: the same numbers as the reference, without its costs.

* Attention runs through ``thought_attention`` (``quietstar_fast.hf``): no dense masks, no mask concatenation.
* The T talk steps run as one model call over T*n tokens (their inputs are known: <|endthought|> and the true
  tokens), i.e. one multi-step attention call with m = T.
* NLLs and thought sampling use the fused LM-head ops (no (N, V) logits), called below the public argument checks
  so that nothing inside the step synchronises with the host. The reward's base NLL at talk step k is the step-0
  NLL shifted by k-1 (the same numbers the official code recomputes).
* Step 0 runs once per example, not once per pass: its inputs are the same for the P passes (the official code
  runs it on all B*P rows). Its hidden states, KV cache and NLL are then repeated to the B*P rows.
"""
from __future__ import annotations

import torch

from .._platform import statistics_dtype
from ..hf import ThoughtLayout, thought_call_kwargs
from ..loss.api import loss_backend
from ..loss.checks import banned_mask
from ..loss.function import linear_nll, weighted_linear_nll
from ..loss.mixing import mix_hidden
from .output import QuietStarOutput
from .steps import base_for_talk_step, cache_kwarg, meta_embedding, teacher_forced_ids


def fast_forward(qs, cache, rows_info, gumbel_noise, generator, output_hidden_states):
    cfg = qs.quietstar_config
    n_ahead, n_talk = cfg.n_ahead, cfg.n_ahead_talk
    ids, labels, rows, seq_len = rows_info.ids, rows_info.labels, rows_info.count, rows_info.seq_len
    decoder = qs.model.get_decoder()
    embed = qs.model.get_input_embeddings()
    weight = qs.model.get_output_embeddings().weight
    dim = weight.shape[1]
    backend = loss_backend(qs.kernel_impl, weight)
    banned = banned_mask([qs.start_token_id, qs.end_token_id], weight.shape[0], weight.device)
    sample_scale = 1.0 if cfg.sample_temperature is None else 1.0 / cfg.sample_temperature
    passes = cfg.n_passes

    def call_kwargs(padding):
        return thought_call_kwargs(ThoughtLayout(seq_len, padding, qs.kernel_impl))

    thought_call = call_kwargs(rows_info.padding)
    cache_name = cache_kwarg(decoder)
    positions = torch.arange(seq_len, device=ids.device)[None]

    def run(inputs, steps, layout_kwargs=thought_call):
        position_ids = torch.cat([positions + step for step in steps], dim=1)
        return decoder(inputs_embeds=inputs, position_ids=position_ids, use_cache=True, **layout_kwargs,
                       **{cache_name: cache}).last_hidden_state

    def nll(hidden, targets):
        return linear_nll(hidden.reshape(-1, dim), weight, targets=targets.reshape(-1), ignore_index=-100,
                          backend=backend)[0]

    # Step 0 over one row per example (rows are example-major: row = b * P + p), then repeated to the P passes.
    example_hidden = run(embed(ids[::passes]), [0], call_kwargs(rows_info.padding[::passes]))
    cache.batch_repeat_interleave(passes)
    base_hidden = example_hidden.repeat_interleave(passes, dim=0)
    example_nll = nll(example_hidden[:, :-1], labels[::passes, 1:])
    base_nll = example_nll.view(rows // passes, seq_len - 1).repeat_interleave(passes, dim=0)
    hidden_states, talk_weights, thought_tokens, logprobs = [base_hidden], [], [], []
    inputs = meta_embedding(qs.start_embedding, cfg.embedding_scale, base_hidden)
    for step in range(1, n_ahead - 1):
        hidden = run(inputs, [step])
        hidden_states.append(hidden)
        with torch.no_grad():  # the thought steps' mixing weights are only reported, as in the official code
            talk_weights.append(qs.talk_head[0](torch.cat([base_hidden, hidden], dim=-1)))
        if step <= n_ahead - 3:
            noise = None if gumbel_noise is None else gumbel_noise[step - 1].reshape(rows * seq_len, -1)
            neg_logprob, _, tokens = linear_nll(hidden.reshape(-1, dim), weight, noise=noise, generator=generator,
                                                banned=banned, inv_t=1.0 / cfg.reinforce_temperature,
                                                sample_scale=sample_scale, backend=backend)
            thought_tokens.append(tokens.view(rows, seq_len))
            logprobs.append(-neg_logprob.view(rows, seq_len))
            inputs = embed(tokens.view(rows, seq_len))
        else:
            inputs = meta_embedding(qs.end_embedding, cfg.embedding_scale, hidden)

    # Talk phase: <|endthought|>, x_{i+1}, ..., x_{i+T-1} in one call (step-major, T blocks of n tokens).
    talk_inputs = [inputs] + [embed(teacher_forced_ids(ids, k, qs.pad_token_id)) for k in range(1, n_talk)]
    talk_hidden = run(torch.cat(talk_inputs, dim=1), range(n_ahead - 1, cfg.num_steps)).view(rows, n_talk, seq_len, dim)
    mixed, targets, lengths = [], [], []
    for k in range(1, n_talk + 1):
        hidden = talk_hidden[:, k - 1]
        hidden_states.append(hidden)
        shifted_base = base_for_talk_step(base_hidden, k)
        mix_weight = qs.talk_head[0](torch.cat([shifted_base, hidden], dim=-1))
        talk_weights.append(mix_weight)
        valid = seq_len - k
        mixed.append(mix_hidden(shifted_base[:, :valid].reshape(-1, dim), hidden[:, :valid].reshape(-1, dim),
                                mix_weight[:, :valid].reshape(-1)))
        targets.append(labels[:, k:].reshape(-1))
        lengths.append(rows * valid)
    if qs.talk_grad_in_forward:
        talk_nll, talk_loss = _talk_terms_with_gradients(cfg, mixed, targets, weight)
        talk_nll = [nll.view(rows, -1) for nll in talk_nll]
    else:  # all T talk NLLs in one fused call
        talk_flat = linear_nll(torch.cat(mixed), weight, targets=torch.cat(targets), ignore_index=-100,
                               backend=backend)[0]
        talk_nll, talk_loss = [part.view(rows, -1) for part in talk_flat.split(lengths)], None
    base_nll_for_reward = [base_nll[:, k - 1:].detach() for k in range(1, n_talk + 1)]

    return QuietStarOutput.from_terms(cfg, base_nll, talk_nll, base_nll_for_reward, logprobs, talk_weights,
                                      thought_tokens, hidden_states, output_hidden_states, talk_loss)


def _talk_terms_with_gradients(cfg, mixed, targets, weight):
    """(the talk NLLs, not differentiable; the objective's talk term): each talk step through
    ``weighted_linear_nll``, whose gradients are computed in its forward. Its row weights are
    (1 - original_loss_weight) / (T * valid rows) and its total is scaled by valid / non-zero rows afterwards, so
    the term equals the official non-zero mean in value and gradient (a valid row whose NLL is exactly 0 counts as
    the official code counts it), on the device. One call per step keeps that scale exact per step."""
    scale = (1 - cfg.original_loss_weight) / cfg.n_ahead_talk
    talk_nll, talk_loss = [], 0.0
    for hidden, target in zip(mixed, targets):
        valid = (target != -100).sum().to(statistics_dtype(hidden.dtype)).clamp_min(1)
        total, nll = weighted_linear_nll(hidden, weight, target, (scale / valid).expand(target.shape), -100)
        talk_nll.append(nll)
        talk_loss = talk_loss + total * (valid / (nll != 0).sum())
    return talk_nll, talk_loss
