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
    if bool(bad.any()):
        example = int(targets[bad][0])
        raise ValueError(f"targets must lie in [0, {vocab}) or equal ignore_index={ignore_index}; found {example}")


def check_temperature(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def banned_mask(
    banned_token_ids: Sequence[int] | torch.Tensor, vocab: int, device: torch.device
) -> torch.Tensor | None:
    """(V,) int8 flags of the banned ids, or None when nothing is banned."""
    ids = torch.as_tensor(banned_token_ids, dtype=torch.int64).flatten().cpu()
    if ids.numel() == 0:
        return None
    if bool(((ids < 0) | (ids >= vocab)).any()):
        raise ValueError(f"banned_token_ids must lie in [0, {vocab}), got {ids.tolist()}")
    mask = torch.zeros(vocab, dtype=torch.int8)
    mask[ids] = 1
    if bool(mask.all()):
        raise ValueError("banned_token_ids bans the whole vocabulary: nothing could be sampled")
    return mask.to(device)
