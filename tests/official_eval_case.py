"""What the official-eval fixture (``scripts/make_official_eval_fixture.py``) and its test share: the tiny Mistral of
the official test vector, its thought settings and the seeded thought noise."""
from __future__ import annotations

import torch

N_AHEAD = 6  # the official test vector's
MAX_LENGTH = 256  # the official eval length
NOISE_SEED = 1234
VOCAB = 302  # 300 tokens + the two thought delimiters (ids 300, 301)
TINY_MISTRAL = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5,
                    rope_theta=1e4, sliding_window=4096, tie_word_embeddings=False, attn_implementation="sdpa")


def thought_noise(rows: int, seq_len: int) -> torch.Tensor:
    """(N-3, rows, seq_len, V) Gumbel noise from NOISE_SEED: torch's CPU generator gives the same draws in every
    version, so the test redraws what the fixture used (and checks its sum)."""
    shape = (N_AHEAD - 3, rows, seq_len, VOCAB)
    uniform = torch.rand(shape, generator=torch.Generator().manual_seed(NOISE_SEED), dtype=torch.float64)
    return (-torch.log(-torch.log(uniform.clamp(1e-12, 1 - 1e-12)))).float()
