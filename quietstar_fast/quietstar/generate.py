"""Thinking generation with a KV cache kept across generated tokens, for a batch of prompts of different lengths.

For each new token, after the last real position i of every row: <|startthought|>, N-3 sampled thought tokens and
<|endthought|> run as single-token steps at positions i+1 .. i+N-1 on top of the real tokens' cache (causal attention
over that cache is exactly the thought mask for one stream); the mixing head combines the last real hidden state with
the hidden state after <|endthought|>, as talk step 1 does in training; then the thought is cropped from the cache and
the chosen token appended. The official inference re-runs the whole sequence for every token instead.

Prompts are left-padded (a tokenizer's ``padding_side="left"``): every row's last real token sits in the last column,
so each step appends one column for all rows. Positions count real tokens only (row b's position = column - its pad
count) and the padding columns stay masked for the whole generation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..loss.mixing import mix_hidden
from .steps import cache_kwarg, new_cache
from .thinking import think


@dataclass
class GenerateOutput:
    sequences: torch.Tensor  # (B, L + new) the (left-padded) prompts and the generated tokens
    thoughts: torch.Tensor  # (B, new, N-3) the thought sampled before each generated token


def check_generate_inputs(input_ids, attention_mask, max_new_tokens, do_sample, temperature, top_p) -> torch.Tensor:
    """The checked (B, L) bool mask of real prompt tokens."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a non-empty (batch, prompt_len) tensor, got "
                         f"{tuple(getattr(input_ids, 'shape', ())) or input_ids!r}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature must be positive when sampling, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if attention_mask is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    if tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                         f"got {tuple(attention_mask.shape)}")
    real = attention_mask.bool()
    if bool((real[:, :-1] & ~real[:, 1:]).any()):
        raise ValueError("attention_mask must be left-padded (zeros, then ones) for generation: pad the prompts on "
                         "the left (tokenizer.padding_side = 'left')")
    if not bool(real[:, -1].all()):
        raise ValueError("every prompt needs at least one real token (a row of attention_mask is all zeros)")
    return real


def mixed_next_token_logits(qs, base: torch.Tensor, after_thought: torch.Tensor, mix_weight: torch.Tensor,
                            weight: torch.Tensor) -> torch.Tensor:
    """(B, V) logits of the mixed prediction (talk step 1) from the last real hidden state ``base`` (B, D) and the
    one after <|endthought|>, with the thought delimiters banned: they are never emitted."""
    logits = mix_hidden(base, after_thought, mix_weight) @ weight.T
    logits[:, [qs.start_token_id, qs.end_token_id]] = float("-inf")
    return logits


def next_token_from_logits(logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float,
                           generator: torch.Generator | None) -> torch.Tensor:
    """Greedy, or sampling from softmax(logits / temperature) restricted to the smallest set of most likely tokens
    whose probability reaches ``top_p`` (nucleus sampling). ``logits``: (B, V) -> (B,) int64."""
    if not do_sample:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)  # keeps at least the most likely token
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@torch.no_grad()
def generate(qs, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, max_new_tokens: int = 32,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
             eos_token_id: int | list[int] | None = None,
             generator: torch.Generator | None = None, streamer=None) -> GenerateOutput:
    real = check_generate_inputs(input_ids, attention_mask, max_new_tokens, do_sample, temperature, top_p)
    cfg = qs.quietstar_config
    if eos_token_id is None:
        generation_config = getattr(qs.model, "generation_config", None)
        eos_token_id = getattr(generation_config, "eos_token_id", None)
        if eos_token_id is None:
            eos_token_id = qs.model.config.eos_token_id
    # Llama 3.x lists several (end of text, end of turn): any of them finishes a row, which then repeats the first.
    eos_ids = None if eos_token_id is None else torch.tensor(
        [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=input_ids.device)
    if eos_ids is not None and eos_ids.numel() == 0:
        eos_ids = None
    decoder = qs.model.get_decoder()
    embed = qs.model.get_input_embeddings()
    weight = qs.model.get_output_embeddings().weight
    cache, cache_name = new_cache(), cache_kwarg(decoder)
    batch, prompt_len = input_ids.shape
    pads = (~real).sum(dim=1, keepdim=True)  # (B, 1) left pads per row
    prompt_mask = None if bool(real.all()) else real.long()  # without padding the model's causal mask is enough

    def step(inputs_embeds):
        """Run the new columns on the cache; return the last column's final hidden state (B, D)."""
        start, width = cache.get_seq_length(), inputs_embeds.shape[1]
        columns = torch.arange(start, start + width, device=input_ids.device)[None]
        mask = None if prompt_mask is None else torch.cat(
            [prompt_mask, prompt_mask.new_ones(batch, start + width - prompt_len)], dim=1)
        return decoder(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=(columns - pads).clamp_min(0),
                       use_cache=True, **{cache_name: cache}).last_hidden_state[:, -1]

    if streamer is not None:
        streamer.put(input_ids.cpu())
    last_hidden = step(embed(input_ids))
    sequences, thoughts = input_ids, []
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        real_length = cache.get_seq_length()
        hidden, thought = think(qs, step, last_hidden, generator)
        mix_weight = qs.talk_head[0](torch.cat([last_hidden, hidden], dim=-1))
        logits = mixed_next_token_logits(qs, last_hidden, hidden, mix_weight, weight)
        next_token = next_token_from_logits(logits, do_sample, temperature, top_p, generator)
        if eos_ids is not None:
            next_token = torch.where(finished, eos_ids[0], next_token)
        cache.crop(real_length - cache.get_seq_length())  # forget the thought (a negative count removes tokens)
        sequences = torch.cat([sequences, next_token[:, None]], dim=1)
        thoughts.append(thought)
        if streamer is not None:
            streamer.put(next_token.cpu())
        if eos_ids is not None:
            finished |= torch.isin(next_token, eos_ids)
            if bool(finished.all()):
                break
        last_hidden = step(embed(next_token[:, None]))
    if streamer is not None:
        streamer.end()
    empty = input_ids.new_zeros(batch, 0, cfg.num_thought_tokens)
    return GenerateOutput(sequences, torch.stack(thoughts, dim=1) if thoughts else empty)
