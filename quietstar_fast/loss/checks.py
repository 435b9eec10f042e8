"""Argument checks for the LM-head loss ops: every error names the argument and what is wrong with it."""
from __future__ import annotations

import math
from typing import Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_matrix(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {x.dtype}; supported: float16, bfloat16, float32, float64")
    return x


def check_hidden_and_weight(name: str, hidden: object, weight: object) -> None:
    """hidden (N, D) and lm_head_weight (V, D): same dtype, device and D."""
    check_matrix(name, hidden)
    check_matrix("lm_head_weight", weight)
    if weight.dtype != hidden.dtype:
        raise TypeError(f"lm_head_weight has dtype {weight.dtype} but {name} has {hidden.dtype}")
    if weight.device != hidden.device:
        raise ValueError(f"lm_head_weight is on {weight.device} but {name} is on {hidden.device}")
    if weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"lm_head_weight has hidden size {weight.shape[1]} but {name} has {hidden.shape[1]}")
    if weight.shape[0] < 1:
        raise ValueError("lm_head_weight has an empty vocabulary")


def check_like_rows(name: str, x: object, hidden: torch.Tensor, hidden_name: str, shapes: Sequence[tuple]) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if tuple(x.shape) not in shapes:
        raise ValueError(f"{name} must have shape {' or '.join(map(str, shapes))}, got {tuple(x.shape)}")
    if x.device != hidden.device:
        raise ValueError(f"{name} is on {x.device} but {hidden_name} is on {hidden.device}")


def check_targets(targets: object, hidden: torch.Tensor, vocab: int, ignore_index: int) -> None:
    check_like_rows("targets", targets, hidden, "h_base", [(hidden.shape[0],)])
    if targets.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"targets must be int64 or int32 token ids, got {targets.dtype}")
    bad = ((targets < 0) | (targets >= vocab)) & (targets != ignore_index)
    if torch.compiler.is_compiling():
        # No data-dependent branch in a compiled graph: the check runs on the device and fails the step there.
        torch._assert_async(~bad.any(), f"targets must lie in [0, {vocab}) or equal ignore_index={ignore_index}")
    elif bool(bad.any()):
        example = int(targets[bad][0])
        raise ValueError(f"targets must lie in [0, {vocab}) or equal ignore_index={ignore_index}; found {example}")


def check_temperature(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def banned_mask(
    banned_token_ids: Sequence[int] | torch.Tensor, vocab: int, device: torch.device
) -> torch.Tensor | None:
    """(V,) int8 flags of the banned ids, or None when nothing is banned. A Python sequence is checked on the host
    without touching a tensor (so compiled graphs need no sync); a tensor is checked too, except inside a compiled
    graph, where its values are unknown."""
    if isinstance(banned_token_ids, torch.Tensor):
        ids = banned_token_ids.flatten().to(device=device, dtype=torch.int64)
        if ids.numel() == 0:
            return None
        if torch.compiler.is_compiling():
            return torch.zeros(vocab, dtype=torch.int8, device=device).index_fill_(0, ids, 1)
        banned_token_ids = ids.tolist()
    ids = [int(i) for i in banned_token_ids]
    if not ids:
        return None
    if any(i < 0 or i >= vocab for i in ids):
        raise ValueError(f"banned_token_ids must lie in [0, {vocab}), got {ids}")
    if len(set(ids)) == vocab:
        raise ValueError("banned_token_ids bans the whole vocabulary: nothing could be sampled")
    return torch.zeros(vocab, dtype=torch.int8, device=device).index_fill_(0, torch.tensor(ids, device=device), 1)
