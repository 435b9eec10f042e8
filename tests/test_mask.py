"""The mask definition: bitwise equal to the official code's masks, and equal to the spec's predicate."""
from pathlib import Path

import pytest
import torch

from quietstar_fast import ThoughtMaskLayout, official_step_mask

TESTDATA = Path(__file__).parent / "data" / "official_quietstar_tiny.pt"


def test_official_step_masks_match_official_code_bitwise():
    data = torch.load(TESTDATA, weights_only=True)
    case = data["cases"]["official_init"]
    padding = case["attention_mask_rows"].bool()
    n = padding.shape[1]
    masks = case["attention_masks"]
    assert len(masks) == 8
    for step, official in enumerate(masks):
        ours = official_step_mask(n, step, padding, sliding_window=4096, dtype=torch.float32)
        assert ours.dtype == official.dtype and torch.equal(ours, official), f"step {step}"


def _spec_allowed(layout: ThoughtMaskLayout, batch: int) -> torch.Tensor:
    """Element-by-element transcription of the spec (quietstar-algorithm.md §2.2), for comparison."""
    n, a = layout.prefix_len, layout.num_stream_steps
    valid = layout.key_padding_mask if layout.key_padding_mask is not None else torch.ones(batch, n, dtype=torch.bool)
    out = torch.zeros(batch, 1, layout.num_query_steps * n, (a + 1) * n, dtype=torch.bool)
    for b in range(batch):
        for row_step, step in enumerate(range(layout.first_query_step, a + 1)):
            for i in range(n):
                for s in range(a + 1):
                    for j in range(n):
                        if s == 0:
                            ok = j <= i and bool(valid[b, j])
                            ok = ok and (layout.sliding_window is None or i - j < layout.sliding_window)
                        else:
                            ok = j == i and s <= step and bool(valid[b, i])
                        out[b, 0, row_step * n + i, s * n + j] = ok
    return out


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("steps", [(0, 1), (2, 1), (3, 2), (3, 4)])
def test_dense_allowed_matches_spec(steps, window):
    a, m = steps
    padding = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [0, 1, 1, 0, 1, 1, 1]], dtype=torch.bool)
    layout = ThoughtMaskLayout(7, a, m, padding, window)
    allowed = layout.dense_allowed()
    assert allowed.shape == (2, 1, m * 7, (a + 1) * 7)
    assert torch.equal(allowed, _spec_allowed(layout, 2))


def test_layout_without_padding_broadcasts_over_batch():
    allowed = ThoughtMaskLayout(5, 2, 1).dense_allowed()
    assert allowed.shape == (1, 1, 5, 15)
    # Each position sees its causal prefix plus itself in both stream blocks.
    assert allowed.sum().item() == sum(i + 1 + 2 for i in range(5))


def test_an_all_padding_batch_is_the_one_documented_divergence():
    """The official code allows a position's own stream keys where C == C.max(), with the max over the whole batch:
    when every key of every row is padding, C.max() is finfo.min and every diagonal entry counts as allowed. The
    spec and the kernels give a padded position no stream key, so such a batch gets o = 0 and lse = -inf (found by
    tests/test_fuzz.py; the fuzz strategies keep at least one real token per batch for this reason)."""
    from quietstar_fast import thought_attention

    padding = torch.zeros(2, 3, dtype=torch.bool)
    official_allowed = official_step_mask(3, 1, padding) == 0
    assert official_allowed[..., 3:].diagonal(dim1=-2, dim2=-1).all()
    assert not _spec_allowed(ThoughtMaskLayout(3, 1, 1, padding), 2).any()
    q, k = torch.randn(2, 1, 3, 8), torch.randn(2, 1, 6, 8)
    out, lse = thought_attention(q, k, k, prefix_len=3, key_padding_mask=padding, return_lse=True, impl="torch")
    assert torch.all(out == 0) and torch.all(lse == float("-inf"))
