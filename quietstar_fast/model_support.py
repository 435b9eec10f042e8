"""Which causal LMs the thought attention plugs into, decided by what the plugging needs rather than a list of
class names, and the attention window of each of a model's layer types.

The fast path reaches a model through three doors: its attention must run through transformers' attention interface
(``apply_quietstar_kernels`` swaps the function), its decoder must take ``inputs_embeds``, ``position_ids`` and a
standard KV cache (the thought steps run at shifted positions on one cache of full and sliding-window attention
layers), and positions must enter through RoPE computed from ``position_ids`` (a thought token at position i + a is
rotated as such). Logit soft-capping of attention scores or of the LM head's logits and attention sinks are not
implemented by the kernels and are refused.
"""
from __future__ import annotations

import inspect

from torch import nn

STANDARD_LAYER_TYPES = ("full_attention", "sliding_attention")


def unsupported_reasons(model: nn.Module) -> list[str]:
    """What keeps ``model`` from Quiet-STaR's fast path; empty when it is supported."""
    config = getattr(model, "config", None)
    if config is None or not callable(getattr(model, "get_decoder", None)):
        return ["it is not a transformers causal LM (no config or get_decoder)"]
    reasons = []
    if not getattr(model, "_supports_attention_backend", False):
        reasons.append("its attention does not run through transformers' attention interface")
    decoder = model.get_decoder()
    parameters = inspect.signature(decoder.forward).parameters
    needed = ["inputs_embeds", "position_ids"] + ([] if {"cache", "past_key_values"} & set(parameters)
                                                  else ["past_key_values"])
    missing = [name for name in needed if name not in parameters]
    if missing:
        reasons.append(f"its decoder's forward takes no {', '.join(missing)}")
    if not isinstance(getattr(decoder, "rotary_emb", None), nn.Module):
        reasons.append("its positions do not enter through a rotary embedding of position_ids (no decoder.rotary_emb)")
    other_layers = sorted(set(getattr(config, "layer_types", None) or ()) - set(STANDARD_LAYER_TYPES))
    if other_layers:
        reasons.append(f"it has {other_layers} layers (a standard KV cache holds full and sliding-window attention)")
    for name, what in (("attn_logit_softcapping", "attention scores"), ("final_logit_softcapping", "logits")):
        if getattr(config, name, None) is not None:
            reasons.append(f"it soft-caps its {what} ({name}={getattr(config, name)}), which the thought attention "
                           "and the fused LM-head ops do not")
    if getattr(config, "use_bidirectional_attention", False):
        reasons.append("its attention is bidirectional")
    if any(isinstance(getattr(module, "sinks", None), nn.Parameter) for module in model.modules()):
        reasons.append("its attention has sink logits (sinks), which the thought attention does not add")
    return reasons


def check_supported_model(model: nn.Module) -> None:
    """Raise a ValueError naming what a refused model lacks."""
    reasons = unsupported_reasons(model)
    if reasons:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        raise ValueError(f"{type(model).__name__} (model_type={model_type!r}) cannot run Quiet-STaR's thought "
                         f"attention: {'; '.join(reasons)}")


def layer_type_windows(config) -> dict[str, int | None]:
    """The attention window of each layer type the model has (None = no window): with ``layer_types`` (Qwen2/3,
    Gemma 3) a sliding layer applies ``sliding_window`` and a full one none; without, every layer applies the config's
    ``sliding_window`` (Mistral, Phi-3; none for Llama, OLMo 2; Qwen2's ``use_sliding_window=False`` turns it off)."""
    layer_types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if getattr(config, "use_sliding_window", True) is False:
        window = None
    if not layer_types:
        return {"full_attention": window}
    return {layer_type: window if layer_type == "sliding_attention" else None for layer_type in set(layer_types)}
