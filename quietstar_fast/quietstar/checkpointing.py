"""Activation checkpointing through the thought loop (design: ``docs/checkpointing.md``).

Every step of a Quiet-STaR call runs the decoder over the KV cache and appends its keys and values to it; a later
step's attention reads them. A checkpointed layer is run a second time in the backward, so its cache update must then
return exactly what it returned in the forward (the keys of the earlier steps, and this step's recomputed ones) and
must not append. ``ThoughtStepCache`` replays instead of appending while a layer is recomputed; ``checkpointed_layers``
wraps each decoder layer in non-reentrant ``torch.utils.checkpoint`` for the duration of one call.

Non-reentrant checkpointing keeps the forward's autograd graph (only the saved activations are dropped and recomputed),
so the gradients into the earlier steps' keys and values flow through the graph the forward built; the replay only has
to reproduce the saved values. Reentrant checkpointing recomputes under ``no_grad`` and would cut those gradients: it
is refused.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

CHECKPOINTING_MODES = (None, "layer")


@functools.lru_cache(maxsize=None)
def step_cache_class():
    """``ThoughtStepCache``, built on first use so that importing the package does not import transformers."""
    from transformers import DynamicCache

    class ThoughtStepCache(DynamicCache):
        """While layer i is recomputed at a step that began with ``prefix`` cached positions, ``update`` returns the
        first ``prefix`` cached keys and values followed by the recomputed new ones, and leaves the cache as it is."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.replay_prefix: dict[int, int] = {}

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            prefix = self.replay_prefix.get(layer_idx)
            if prefix is None:
                return super().update(key_states, value_states, layer_idx, *args, **kwargs)
            if prefix == 0:
                return key_states, value_states
            # Detached: the forward's graph carries the gradients; the recompute only reproduces saved values.
            layer = self.layers[layer_idx]
            return (torch.cat([layer.keys[..., :prefix, :].detach(), key_states], dim=-2),
                    torch.cat([layer.values[..., :prefix, :].detach(), value_states], dim=-2))

        @contextmanager
        def replaying(self, layer_idx: int, prefix: int) -> Iterator[None]:
            self.replay_prefix[layer_idx] = prefix
            try:
                yield
            finally:
                del self.replay_prefix[layer_idx]

    return ThoughtStepCache


def _hf_switch(module: nn.Module) -> bool:
    return bool(getattr(module, "gradient_checkpointing", False))


def hf_checkpointing_requested(model: nn.Module) -> bool:
    """Whether ``model.gradient_checkpointing_enable()`` (transformers' switch) is on for any of its modules."""
    return any(_hf_switch(module) for module in model.modules())


def _non_reentrant(function: Callable, where: str) -> Callable:
    """HF's checkpoint function for a layer, if it is verifiably non-reentrant; else a clear error."""
    keywords = getattr(function, "keywords", None)
    if keywords is None or keywords.get("use_reentrant", True) is not False:
        raise ValueError(
            f"{where} has gradient checkpointing with use_reentrant=True (or an unknown checkpoint function): "
            "reentrant checkpointing recomputes under no_grad and would cut the gradients into the earlier thought "
            "steps' keys and values. Enable it with gradient_checkpointing_kwargs={'use_reentrant': False}, or "
            "pass activation_checkpointing='layer' to QuietStar")
    return function


def checkpoint_functions(decoder: nn.Module, mode: str | None) -> list[Callable | None]:
    """For each decoder layer, the non-reentrant checkpoint function to run it under (None: not checkpointed).

    ``mode="layer"`` checkpoints every layer with ``torch.utils.checkpoint`` (non-reentrant); ``None`` follows
    transformers' switch: the layers it marks (``every_n_layers``), with its function (``offload`` and the other
    kwargs kept) once it is shown to be non-reentrant."""
    if mode not in CHECKPOINTING_MODES:
        raise ValueError(f"activation_checkpointing must be one of {CHECKPOINTING_MODES}, got {mode!r}")
    layers = decoder.layers
    if mode is None and any(_hf_switch(layer) for layer in layers):
        return [_non_reentrant(layer._gradient_checkpointing_func, f"decoder layer {index}") if _hf_switch(layer)
                else None for index, layer in enumerate(layers)]
    if mode == "layer" or hf_checkpointing_requested(decoder):  # a switch on the decoder alone (older model code)
        return [functools.partial(checkpoint, use_reentrant=False)] * len(layers)
    return [None] * len(layers)


def _cache_index(layer: nn.Module, position: int) -> int:
    return getattr(getattr(layer, "self_attn", None), "layer_idx", position)


@contextmanager
def _hf_switch_paused(modules: list[nn.Module]) -> Iterator[None]:
    """transformers' own checkpointing drops the KV cache in training mode: off while the layers run."""
    switched = [module for module in modules if _hf_switch(module)]
    for module in switched:
        module.gradient_checkpointing = False
    try:
        yield
    finally:
        for module in switched:
            module.gradient_checkpointing = True


class _CheckpointedForward:
    """Stands in for one decoder layer's ``forward`` during a call: runs it under ``run_checkpointed`` with the cache
    replaying this layer's update in the recompute."""

    def __init__(self, layer: nn.Module, cache, cache_index: int, run_checkpointed: Callable):
        self.layer, self.cache, self.cache_index = layer, cache, cache_index
        self.run_checkpointed = run_checkpointed

    def _layer_forward(self, *args, **kwargs):
        with _hf_switch_paused([self.layer]):  # the recompute runs in the backward, after the call restored it
            return type(self.layer).forward(self.layer, *args, **kwargs)

    def __call__(self, *args, **kwargs):
        if not torch.is_grad_enabled():
            return self._layer_forward(*args, **kwargs)
        prefix = self.cache.get_seq_length(self.cache_index)
        runs = 0

        def run(*run_args, **run_kwargs):
            nonlocal runs
            runs += 1
            if runs == 1:
                return self._layer_forward(*run_args, **run_kwargs)
            with self.cache.replaying(self.cache_index, prefix):
                return self._layer_forward(*run_args, **run_kwargs)

        return self.run_checkpointed(functools.partial(run, **kwargs), *args)


@contextmanager
def checkpointed_layers(model: nn.Module, decoder: nn.Module, cache, mode: str | None) -> Iterator[None]:
    """Within the block, ``decoder``'s layers run checkpointed as ``mode`` (or transformers' switch) says, over
    ``cache`` (a ``ThoughtStepCache``); transformers' own checkpointing is paused. Layers run as usual without
    gradients; transformers' switch applies in training mode only (its own rule), an explicit mode whenever
    gradients are computed (a model loaded with ``from_pretrained`` is in eval mode)."""
    functions = checkpoint_functions(decoder, mode) if mode is not None or model.training else []
    wrapped = [(layer, function) for layer, function in zip(decoder.layers, functions) if function is not None]
    if not wrapped:
        yield
        return
    for position, (layer, function) in enumerate(zip(decoder.layers, functions)):
        if function is not None:
            layer.forward = _CheckpointedForward(layer, cache, _cache_index(layer, position), function)
    try:
        with _hf_switch_paused(list(model.modules())):
            yield
    finally:
        for layer, _ in wrapped:
            del layer.forward
