"""What a Quiet-STaR training step needs in memory, before buying or renting the GPU: ``estimate_step_memory``.

The step's activations depend on every detail of the model code (which tensors HF's layers save, in which dtype),
of the thought loop and of activation checkpointing, so they are not written down as a formula here: the step is
run on the meta device, where tensors have shapes and dtypes but no data, under a dispatch mode that adds up the bytes
of every storage the step creates and subtracts them when the storage is freed. The largest sum is the step's peak,
exactly as the code allocates it (the fast path with the chunked PyTorch kernels, whose temporaries are a few MB; the
fused Triton/CUDA kernels allocate their outputs only). Weights, gradients and optimizer state are counted from the
parameters. Not modelled: the CUDA caching allocator's rounding and fragmentation (add about 10%), the CUDA context
and library workspaces (about 0.5-1 GB), and the data loader.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .attention import torch_impl as torch_attention
from .lora import LORA_PROJECTIONS, add_lora
from .loss import chunked
from .quietstar import QuietStar
from .quietstar.module import run_step

OPTIMIZER_STATES = {"adamw": 2, "sgd": 0}  # states per trainable parameter, in the parameter's dtype (torch.optim)


@dataclass(frozen=True)
class StepMemory:
    """Bytes. ``total`` = weights + optimizer_state + step_peak; ``step_peak`` includes the step's new gradients
    (the previous ones freed by ``zero_grad(set_to_none=True)``), the activations kept for the backward, the KV
    cache and the transients (logit chunks, attention chunks)."""

    weights: int
    gradients: int
    optimizer_state: int
    kv_cache: int
    step_peak: int

    @property
    def total(self) -> int:
        return self.weights + self.optimizer_state + self.step_peak


# Ops whose implementation allocates an input-sized temporary that no op output shows (aten's logsumexp keeps
# x - max(x) while it sums; seen in the profiler's allocator events, tests/test_memory_model.py): the counter adds it
# for the op's duration.
_INPUT_SIZED_WORKSPACE = {torch.ops.aten.logsumexp.default}


class _LiveBytes(TorchDispatchMode):
    """Adds up the bytes of the storages the ops create; a storage's bytes leave the sum when it is freed. Storages
    that existed before (parameters, inputs) are never counted: every input's storage is marked as seen first."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for tensor in tree_leaves((args, kwargs)):
            if isinstance(tensor, torch.Tensor):
                _mark_seen(tensor.untyped_storage())
        if func in _INPUT_SIZED_WORKSPACE:
            self.peak = max(self.peak, self.live + args[0].numel() * args[0].element_size())
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                if _mark_seen(storage):
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, storage.nbytes())
        return out


def _mark_seen(storage) -> bool:
    """True the first time a storage is seen."""
    if getattr(storage, "_quietstar_seen", False):
        return False
    storage._quietstar_seen = True
    return True


@contextmanager
def _chunks_as_on(device: str):
    """The LM-head ops and the PyTorch attention size their chunks by device type: on the meta device, size them as
    on ``device``."""
    budgets = (chunked._CHUNK_ELEMENTS, torch_attention.SCORE_CHUNK_ELEMENTS)
    for budget in budgets:
        budget["meta"] = budget[device]
    try:
        yield
    finally:
        for budget in budgets:
            del budget["meta"]


def _meta_quietstar(config, dtype, checkpointing, lora_rank, lora_targets, lora_fp32, options):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    if lora_rank is not None:
        model = add_lora(model, lora_rank, targets=lora_targets, fp32_adapters=lora_fp32)
    vocab = config.vocab_size
    # The pad id only marks ignored labels (no memory effect); configs built from shapes may carry none.
    return QuietStar(model, start_token_id=vocab - 2, end_token_id=vocab - 1, init_token_id=0, pad_token_id=0,
                     impl="fast", kernel_impl="torch", activation_checkpointing=checkpointing, **options)


def _parameter_bytes(quiet, trainable_only: bool) -> int:
    return sum(p.numel() * p.element_size() for p in quiet.parameters() if p.requires_grad or not trainable_only)


def estimate_step_memory(config, batch: int, seq_len: int, *, n_ahead: int = 12, n_ahead_talk: int = 4,
                         n_passes: int = 2, dtype: torch.dtype = torch.bfloat16, checkpointing: str | None = None,
                         lora_rank: int | None = None,
                         lora_targets: tuple[str, ...] = LORA_PROJECTIONS,
                         lora_fp32: bool = True, optimizer: str = "adamw", device: str = "cuda") -> StepMemory:
    """Memory of one ``QuietStar`` training step (forward and backward) of the model ``config`` describes.

    Args:
        config: a transformers config of a supported family (e.g. ``AutoConfig.from_pretrained(name)``, or built).
        batch, seq_len: distinct sequences per step and their length n (every token real).
        n_ahead, n_ahead_talk, n_passes: the Quiet-STaR sizes N, T, P.
        dtype: the model's dtype (weights and activations).
        checkpointing: ``QuietStar``'s ``activation_checkpointing`` (None or "layer").
        lora_rank: LoRA adapters of this rank (alpha = 2 * rank) on ``lora_targets`` (needs peft); None trains
            every weight.
        lora_fp32: PEFT's default, fp32 adapters on a 16-bit model (``get_peft_model(autocast_adapter_dtype=
            True)``): each adapted projection then also keeps an fp32 copy of its input for the backward.
        optimizer: "adamw" (two states per trainable parameter, in its dtype, as ``torch.optim.AdamW``) or "sgd".
        device: "cuda" or "cpu": the LM-head ops size their logit chunks for it.
    Returns a ``StepMemory`` (bytes)."""
    if optimizer not in OPTIMIZER_STATES:
        raise ValueError(f"optimizer must be one of {tuple(OPTIMIZER_STATES)}, got {optimizer!r}")
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
    if batch < 1 or seq_len < 1:
        raise ValueError(f"batch and seq_len must be positive, got batch={batch}, seq_len={seq_len}")
    options = dict(n_ahead=n_ahead, n_ahead_talk=n_ahead_talk, n_passes=n_passes)
    quiet = _meta_quietstar(config, dtype, checkpointing, lora_rank, lora_targets, lora_fp32, options)
    quiet.train()
    ids = torch.zeros(batch, seq_len, dtype=torch.long, device="meta")
    with _chunks_as_on(device), _LiveBytes() as tracker:
        run_step(quiet, ids, torch.ones_like(ids)).loss.backward()
    trainable = _parameter_bytes(quiet, trainable_only=True)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    positions = batch * n_passes * seq_len * quiet.quietstar_config.num_steps  # every step's n positions stay cached
    kv_cache = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * positions * dtype.itemsize
    return StepMemory(weights=_parameter_bytes(quiet, trainable_only=False), gradients=trainable,
                      optimizer_state=OPTIMIZER_STATES[optimizer] * trainable, kv_cache=kv_cache,
                      step_peak=tracker.peak)
