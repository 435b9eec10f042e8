"""The reference Quiet-STaR training call: the official algorithm step by step, readable, in plain PyTorch + HF.

Schedule (quietstar-algorithm.md §1): step 0 reads the real tokens; step 1 reads <|startthought|>; steps 2..N-3
read the previous sampled thought token; step N-2's sample is replaced by <|endthought|>; talk steps N-1..N+T-2
read the true tokens x_{i+1}, x_{i+2}, ... (teacher forcing). Step a runs at position ids i + a over the model's
KV cache and the official dense mask [C | D | ... | D] through the model's stock attention; logits are full.
"""
from __future__ import annotations

import torch

from ..loss import mixed_cross_entropy, sample_thought_tokens
from ..mask import official_step_mask
from ..model_support import layer_type_windows
from .output import QuietStarOutput
from .steps import base_for_talk_step, cache_kwarg, meta_embedding, teacher_forced_ids


def reference_forward(qs, cache, rows_info, gumbel_noise, generator, output_hidden_states):
    cfg = qs.quietstar_config
    n_ahead = cfg.n_ahead
    ids, labels, rows, seq_len = rows_info.ids, rows_info.labels, rows_info.count, rows_info.seq_len
    decoder = qs.model.get_decoder()
    embed = qs.model.get_input_embeddings()
    weight = qs.model.get_output_embeddings().weight
    cache_name = cache_kwarg(decoder)
    positions = torch.arange(seq_len, device=ids.device)[None]

    def mixed_logits_nll(h_base, h_thought, mix_weight, targets):
        dim = h_base.shape[-1]
        return mixed_cross_entropy(h_base.reshape(-1, dim), weight, targets.reshape(-1),
                                   h_thought=h_thought.reshape(-1, dim), mix_weight=mix_weight.reshape(-1),
                                   impl="reference").view(rows, -1)

    windows = layer_type_windows(qs.model.config)

    def step_mask(step):
        """The official dense mask of ``step``; a model with full and sliding layers takes one per layer type."""
        masks = {layer_type: official_step_mask(seq_len, step, rows_info.padding, window, dtype=inputs.dtype,
                                                device=ids.device) for layer_type, window in windows.items()}
        return masks if len(masks) > 1 else next(iter(masks.values()))

    inputs = embed(ids)
    hidden_states, talk_weights, thought_tokens, logprobs = [], [], [], []
    talk_nll, base_nll_for_reward = [], []
    for step in range(cfg.num_steps):
        hidden = decoder(inputs_embeds=inputs, attention_mask=step_mask(step), position_ids=positions + step,
                         use_cache=True, **{cache_name: cache}).last_hidden_state
        hidden_states.append(hidden)
        if step == 0:
            base_hidden = hidden
            base_nll = mixed_cross_entropy(hidden[:, :-1].reshape(-1, hidden.shape[-1]), weight,
                                           labels[:, 1:].reshape(-1), impl="reference").view(rows, -1)
        else:
            talk_step = step - (n_ahead - 2)  # k >= 1 in the talk phase
            shifted_base = base_for_talk_step(base_hidden, talk_step)
            mix_weight = qs.talk_head[0](torch.cat([shifted_base, hidden], dim=-1))
            talk_weights.append(mix_weight)
            if talk_step >= 1:
                valid = seq_len - talk_step
                targets = labels[:, talk_step:]
                talk_nll.append(mixed_logits_nll(shifted_base[:, :valid], hidden[:, :valid], mix_weight[:, :valid],
                                                 targets))
                with torch.no_grad():
                    base_nll_for_reward.append(mixed_cross_entropy(
                        shifted_base[:, :valid].reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1),
                        impl="reference").view(rows, -1))
        if step == cfg.num_steps - 1:
            break
        # The next step's input.
        if step == 0:
            inputs = meta_embedding(qs.start_embedding, cfg.embedding_scale, inputs)
        elif step <= n_ahead - 3:
            noise = None if gumbel_noise is None else gumbel_noise[step - 1].reshape(rows * seq_len, -1)
            tokens, logprob = sample_thought_tokens(
                hidden.reshape(rows * seq_len, -1), weight, gumbel_noise=noise, generator=generator,
                banned_token_ids=[qs.start_token_id, qs.end_token_id],
                policy_temperature=cfg.reinforce_temperature, sample_temperature=cfg.sample_temperature,
                impl="reference")
            thought_tokens.append(tokens.view(rows, seq_len))
            logprobs.append(logprob.view(rows, seq_len))
            inputs = embed(tokens.view(rows, seq_len))
        elif step == n_ahead - 2:
            inputs = meta_embedding(qs.end_embedding, cfg.embedding_scale, inputs)
        else:
            inputs = embed(teacher_forced_ids(ids, step - (n_ahead - 2), qs.pad_token_id))

    return QuietStarOutput.from_terms(cfg, base_nll, talk_nll, base_nll_for_reward, logprobs, talk_weights,
                                      thought_tokens, hidden_states, output_hidden_states)
