"""LoRA adapters the way this library's example, benchmarks and memory model add them (needs ``peft``)."""
from __future__ import annotations

from torch import nn

# Every attention and MLP projection of the supported families, Phi-3's fused ones included (PEFT skips names a model
# lacks); never the embeddings: QuietStar refuses those.
LORA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv_proj",
                    "gate_up_proj")


def add_lora(model: nn.Module, rank: int, *, targets: tuple[str, ...] = LORA_PROJECTIONS,
             fp32_adapters: bool = True) -> nn.Module:
    """``peft.get_peft_model`` with LoRA of ``rank`` (alpha = 2 * rank, no dropout) on ``targets``; the base weights
    are frozen. ``fp32_adapters``: PEFT's default, fp32 adapters on a 16-bit model (``autocast_adapter_dtype``)."""
    import peft

    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(targets))
    return peft.get_peft_model(model, config, autocast_adapter_dtype=fp32_adapters)
