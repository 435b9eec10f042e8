"""Thinking generation with a KV cache kept across generated tokens.

For each new token, after the last real position i: <|startthought|>, N-3 sampled thought tokens and <|endthought|>
run as single-token steps at positions i+1 .. i+N-1 on top of the real tokens' cache (causal attention over that
cache is exactly the thought mask for one stream); the mixing head combines the last real hidden state with the
hidden state after <|endthought|>, as talk step 1 does in training; then the thought is cropped from the cache and
the chosen token appended. The official inference re-runs the whole sequence for every token instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..loss.mixing import mix_hidden
from .steps import cache_kwarg, meta_embedding, new_cache


@dataclass
class GenerateOutput:
    sequences: torch.Tensor  # (B, L + new) prompt and generated tokens
    thoughts: torch.Tensor  # (B, new, N-3) the thought sampled before each generated token


@torch.no_grad()
def generate(qs, input_ids: torch.Tensor, *, max_new_tokens: int = 32, do_sample: bool = False,
             temperature: float = 1.0, eos_token_id: int | None = None,
             generator: torch.Generator | None = None) -> GenerateOutput:
    from ..loss import sample_thought_tokens

    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a non-empty (batch, prompt_len) tensor, got {tuple(input_ids.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature must be positive when sampling, got {temperature}")
    cfg = qs.quietstar_config
    if eos_token_id is None:
        eos_token_id = qs.model.config.eos_token_id
    decoder = qs.model.get_decoder()
    embed = qs.model.get_input_embeddings()
    weight = qs.model.get_output_embeddings().weight
    meta = [qs.start_token_id, qs.end_token_id]
    cache, cache_name = new_cache(), cache_kwarg(decoder)
    batch = input_ids.shape[0]

    def step(inputs_embeds, first_position):
        """Run tokens at positions first_position.. on the cache; return the last token's final hidden state."""
        positions = torch.arange(inputs_embeds.shape[1], device=input_ids.device)[None] + first_position
        return decoder(inputs_embeds=inputs_embeds, position_ids=positions, use_cache=True,
                       **{cache_name: cache}).last_hidden_state[:, -1]

    last_hidden = step(embed(input_ids), 0)
    sequences, thoughts = input_ids, []
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        position = cache.get_seq_length() - 1  # the last real token
        inputs = meta_embedding(qs.start_embedding, cfg.embedding_scale, last_hidden[:, None])
        thought = []
        for offset in range(1, cfg.n_ahead):
            hidden = step(inputs, position + offset)
            if offset <= cfg.num_thought_tokens:
                token, _ = sample_thought_tokens(hidden, weight, generator=generator, banned_token_ids=meta,
                                                 policy_temperature=cfg.reinforce_temperature,
                                                 sample_temperature=cfg.sample_temperature)
                thought.append(token)
                inputs = embed(token[:, None])
            elif offset == cfg.n_ahead - 2:
                inputs = meta_embedding(qs.end_embedding, cfg.embedding_scale, inputs)
        mix_weight = qs.talk_head[0](torch.cat([last_hidden, hidden], dim=-1))
        logits = mix_hidden(last_hidden, hidden, mix_weight) @ weight.T
        logits[:, meta] = float("-inf")  # the thought delimiters are never emitted
        if do_sample:
            probs = torch.softmax(logits.float() / temperature, dim=-1)
            next_token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            next_token = logits.argmax(dim=-1)
        if eos_token_id is not None:
            next_token = torch.where(finished, torch.full_like(next_token, eos_token_id), next_token)
        cache.crop(position + 1 - cache.get_seq_length())  # forget the thought (a negative count removes tokens)
        sequences = torch.cat([sequences, next_token[:, None]], dim=1)
        thoughts.append(torch.stack(thought, dim=1) if thought else next_token.new_zeros(batch, 0))
        if eos_token_id is not None:
            finished |= next_token == eos_token_id
            if bool(finished.all()):
                break
        last_hidden = step(embed(next_token[:, None]), position + 1)
    empty = input_ids.new_zeros(batch, 0, cfg.num_thought_tokens)
    return GenerateOutput(sequences, torch.stack(thoughts, dim=1) if thoughts else empty)
