"""``QuietStar``: a Quiet-STaR training wrapper around an HF causal LM."""
from __future__ import annotations

import os

import torch
from torch import nn

from .._platform import IMPLS as BACKEND_IMPLS
from ..hf import apply_quietstar_kernels
from ..model_support import check_supported_model
from .checkpointing import CHECKPOINTING_MODES, checkpointed_layers
from .config import QuietStarConfig
from .fast import fast_forward
from .output import QuietStarOutput
from .reference import reference_forward
from .saving import OWN_PREFIXES, load_quietstar, save_quietstar
from .steps import make_rows, new_cache
from .tokens import END_THOUGHT, INIT_TEXT, START_THOUGHT

IMPLS = ("fast", "reference")
KERNEL_IMPLS = tuple(impl for impl in BACKEND_IMPLS if impl != "reference")  # the fast path's backends


def run_step(quiet: "QuietStar", input_ids: torch.Tensor, attention_mask: torch.Tensor,
             gumbel_noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
             output_hidden_states: bool = False, labels: torch.Tensor | None = None) -> QuietStarOutput:
    """The training call on checked inputs (``QuietStar.forward`` checks them first; reading them would stop the
    memory estimate, which runs the step on the meta device)."""
    run = fast_forward if quiet.impl == "fast" else reference_forward
    rows = make_rows(input_ids, attention_mask, quiet.quietstar_config.n_passes, quiet.pad_token_id, labels)
    cache = new_cache()
    with checkpointed_layers(quiet.model, quiet.model.get_decoder(), cache, quiet.activation_checkpointing):
        return run(quiet, cache, rows, gumbel_noise, generator, output_hidden_states)


def _ids_from_tokenizer(tokenizer, start, end, init, pad):
    """Fill the ids not given from the tokenizer; the delimiters must have been added (``add_thought_tokens``)."""
    if start is None or end is None:
        looked_up = tokenizer.convert_tokens_to_ids([START_THOUGHT, END_THOUGHT])
        unknown = tokenizer.unk_token_id is not None and tokenizer.unk_token_id in looked_up
        if unknown or None in looked_up:
            raise ValueError("the tokenizer has no thought delimiters: call add_thought_tokens(model, tokenizer) first")
        start = looked_up[0] if start is None else start
        end = looked_up[1] if end is None else end
    if init is None:
        init = tokenizer.encode(INIT_TEXT, add_special_tokens=False)[0]
    if pad is None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return start, end, init, pad


def _refuse_embedding_adapters(model: nn.Module) -> None:
    """The meta embeddings' initialisation and the fused LM-head ops read the embedding weights directly, so an adapter
    (LoRA) or a PEFT copy (``modules_to_save``) on them would be silently ignored."""
    for role, module in (("input embeddings", model.get_input_embeddings()),
                         ("output embeddings (LM head)", model.get_output_embeddings())):
        if hasattr(module, "base_layer") or hasattr(module, "original_module"):
            raise ValueError(f"the model's {role} carry a PEFT adapter ({type(module).__name__}): QuietStar reads "
                             "their weight directly (meta-token initialisation, fused LM-head ops), so it would be "
                             "ignored; leave embed_tokens and lm_head out of target_modules and modules_to_save")


def build_talk_head(hidden_size: int, init_std: float) -> nn.ModuleList:
    """The official mixing head: Linear(2D, D) - ReLU - Linear(D, D) - ReLU - Linear(D, 1, no bias), no sigmoid.

    Wrapped in a ModuleList so parameter names match the official checkpoints (``talk_head.0.4.weight``). The first
    two layers get HF's default init (normal(0, initializer_range), zero bias); the last is zero, so the mixing
    weight starts at 0 and the model starts as the base model.
    """
    head = nn.Sequential(
        nn.Linear(2 * hidden_size, hidden_size), nn.ReLU(),
        nn.Linear(hidden_size, hidden_size), nn.ReLU(),
        nn.Linear(hidden_size, 1, bias=False),
    )
    for layer in (head[0], head[2]):
        nn.init.normal_(layer.weight, std=init_std)
        nn.init.zeros_(layer.bias)
    nn.init.zeros_(head[4].weight)
    return nn.ModuleList([head])


class QuietStar(nn.Module):
    """Quiet-STaR (Zelikman et al. 2024) around an HF causal LM, as the official code trains it.

    Args:
        model: an HF causal LM (Llama 2/3.x, Mistral, Qwen2/2.5/3, Gemma 3, Phi-3, OLMo 2, or any model the checks of
            ``model_support.py`` accept: attention through the attention interface, a standard KV cache, RoPE from
            ``position_ids``, no logit soft-capping) whose vocabulary already
            holds the two meta tokens (``start_token_id``, ``end_token_id``); see ``add_thought_tokens``. It may be a
            PEFT model (``peft.get_peft_model``, or LoRA layers injected): the trainable set is then the adapters plus
            the meta embeddings and the mixing head, and the frozen LM head takes the fused ops' path that computes
            no weight gradient. Adapters on the input or output embeddings are refused (their weights are read
            directly).
        start_token_id, end_token_id: ids of <|startthought|> and <|endthought|>; never sampled.
        init_token_id: the token whose input embedding initialises both meta embeddings (the official code uses the
            first token of "---").
        tokenizer: an HF tokenizer to take the ids not given from: the delimiters (after ``add_thought_tokens``), the
            first token of "---" and the pad id.
        pad_token_id: labels equal to it are ignored, as in the official code (where pad = eos). Defaults to the
            model config's pad id, else its eos id; with neither, no label is ignored beyond the attention mask.
        impl: "fast" (thought attention, one call for the T talk steps, fused LM-head ops) or "reference" (the
            official computation: dense masks through stock SDPA attention with the KV cache, full logits). Both give
            the same numbers; the attribute can be switched between calls.
        kernel_impl: backend of the thought attention and the fused LM-head ops in the fast path ("auto", "triton",
            "cuda", "torch").
        activation_checkpointing: "layer" recomputes each decoder layer of each step in the backward instead of
            keeping its activations (``docs/checkpointing.md``); None (default) follows transformers' switch
            (``model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})``), with
            its ``every_n_layers`` and ``offload``, in training mode as transformers applies it. Either way the KV
            cache keeps its thought-loop semantics and the numbers are those without checkpointing. Applies only
            when gradients are computed; the attribute can be switched.
        talk_grad_in_forward: the fast path computes the talk loss's gradients in its forward
            (``weighted_mixed_cross_entropy``: the talk loss is the last op before ``backward()``), one LM-head GEMM
            fewer per talk step, with the same numbers (the row-chunked PyTorch LM-head path, whatever kernel_impl);
            the price is one (V, D) dW per talk step held from the forward to the backward. Off by default; the
            attribute can be switched.
        Other keyword arguments set ``QuietStarConfig`` fields (n_ahead=12, n_ahead_talk=4, n_passes=2, ...), kept as
            ``quietstar_config``; ``config`` is the base model's HF config.

    The model's attention is switched to the "quietstar_thought" implementation (``apply_quietstar_kernels``),
    which falls back to SDPA for ordinary calls, so the reference path and plain use of the model are unchanged.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        start_token_id: int | None = None,
        end_token_id: int | None = None,
        init_token_id: int | None = None,
        pad_token_id: int | None = None,
        tokenizer=None,
        impl: str = "fast",
        kernel_impl: str = "auto",
        activation_checkpointing: str | None = None,
        talk_grad_in_forward: bool = False,
        **options,
    ):
        super().__init__()
        check_supported_model(model)
        _refuse_embedding_adapters(model)
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        if kernel_impl not in KERNEL_IMPLS:
            raise ValueError(f"kernel_impl must be one of {KERNEL_IMPLS}, got {kernel_impl!r}")
        if activation_checkpointing not in CHECKPOINTING_MODES:
            raise ValueError(f"activation_checkpointing must be one of {CHECKPOINTING_MODES}, "
                             f"got {activation_checkpointing!r}")
        if tokenizer is not None:
            start_token_id, end_token_id, init_token_id, pad_token_id = _ids_from_tokenizer(
                tokenizer, start_token_id, end_token_id, init_token_id, pad_token_id)
        vocab, hidden = model.get_input_embeddings().weight.shape
        for name, token in (("start_token_id", start_token_id), ("end_token_id", end_token_id),
                            ("init_token_id", init_token_id)):
            if token is None:
                raise ValueError(f"{name} is required (or pass tokenizer= to look it up)")
            if not 0 <= token < vocab:
                raise ValueError(f"{name}={token} is outside the model's vocabulary of {vocab}")
        self.quietstar_config = QuietStarConfig(**options)
        self.model = apply_quietstar_kernels(model)
        self.impl = impl
        self.kernel_impl = kernel_impl
        self.activation_checkpointing = activation_checkpointing
        self.talk_grad_in_forward = bool(talk_grad_in_forward)
        self.start_token_id, self.end_token_id, self.init_token_id = start_token_id, end_token_id, init_token_id
        if pad_token_id is None:
            pad_token_id = model.config.pad_token_id
            if pad_token_id is None:
                pad_token_id = model.config.eos_token_id
        if isinstance(pad_token_id, (list, tuple)):  # Llama 3.x configs list several eos ids: the first is the pad
            pad_token_id = pad_token_id[0] if pad_token_id else None
        if pad_token_id is not None and not 0 <= pad_token_id < vocab:
            raise ValueError(f"pad_token_id={pad_token_id} is outside the model's vocabulary of {vocab} (it fills the "
                             "teacher-forced inputs past the sequence end); pass pad_token_id= an id in it")
        self.pad_token_id = pad_token_id
        # Row 0: the mean vector stored / embedding_scale; row 1: a log-std (used only by an option the official code
        # leaves off). The x100 reparameterisation is kept: under Adam it is a 100x learning rate (official quirk).
        # The init token's embedding is taken as the model feeds it (Gemma's embedding module scales by sqrt(D)).
        embed = model.get_input_embeddings()
        embedding = embed.weight.detach()
        scale = self.quietstar_config.embedding_scale
        init_vector = embed(torch.tensor([init_token_id], device=embedding.device))[0].detach()
        init = torch.stack([init_vector / scale, torch.log(embedding.std(dim=0) * 1e-2 / scale)])
        self.start_embedding = nn.Parameter(init.clone())
        self.end_embedding = nn.Parameter(init.clone())
        init_std = getattr(model.config, "initializer_range", 0.02)
        self.talk_head = build_talk_head(hidden, init_std).to(device=embedding.device, dtype=embedding.dtype)

    @property
    def config(self):
        """The base model's HF config, as on any transformers model (``Trainer`` and ``accelerate`` read and set it);
        the Quiet-STaR settings are ``quietstar_config``."""
        return self.model.config

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What training changes: every parameter that requires a gradient (with LoRA: the adapters, the meta
        embeddings and the mixing head), detached; the frozen base weights come from where the model was loaded."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a ``trainable_state_dict``; its names must be exactly this model's trainable parameters."""
        expected = {name for name, p in self.named_parameters() if p.requires_grad}
        if set(state_dict) != expected:
            raise ValueError(f"state_dict does not match the trainable parameters: missing "
                             f"{sorted(expected - set(state_dict))}, unexpected {sorted(set(state_dict) - expected)}")
        parameters = dict(self.named_parameters())
        with torch.no_grad():
            for name, value in state_dict.items():
                parameters[name].copy_(value)

    def save_pretrained(self, save_directory: str | os.PathLike, **save_kwargs) -> None:
        """Save everything ``from_pretrained`` needs into ``save_directory``: the base model through its own
        ``save_pretrained`` (``save_kwargs`` go there), ``quietstar.safetensors`` (meta embeddings and mixing head)
        and ``quietstar_config.json`` (the ``QuietStarConfig`` and the token ids). A PEFT-wrapped model is refused:
        merge its adapters first (``quiet.model = quiet.model.merge_and_unload()``)."""
        save_quietstar(self, save_directory, **save_kwargs)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, impl: str = "fast", kernel_impl: str = "auto",
                        activation_checkpointing: str | None = None, **model_kwargs) -> "QuietStar":
        """Load a ``QuietStar`` saved by ``save_pretrained``: one line gives back the trained model, meta embeddings,
        mixing head and settings. ``model_kwargs`` go to ``AutoModelForCausalLM.from_pretrained`` (``dtype``,
        ``device_map``, ...); ``impl``, ``kernel_impl`` and ``activation_checkpointing`` are choices of this run,
        not saved."""
        return load_quietstar(cls, directory, impl=impl, kernel_impl=kernel_impl,
                              activation_checkpointing=activation_checkpointing, **model_kwargs)

    def load_official_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a state dict saved by the official code: base model weights (``model.*``, ``lm_head.weight``) plus
        ``start_embedding``, ``end_embedding`` and ``talk_head.0.*``. Strict: every key must be used."""
        base = {k: v for k, v in state_dict.items() if not k.startswith(OWN_PREFIXES)}
        own = {k: v for k, v in state_dict.items() if k.startswith(OWN_PREFIXES)}
        self.model.load_state_dict(base, strict=True)
        missing, unexpected = nn.Module.load_state_dict(self, {**own, **{f"model.{k}": v for k, v in base.items()}},
                                                        strict=False)
        if unexpected or any(not k.startswith("model.") for k in missing):
            raise ValueError(f"state_dict does not match: missing {missing}, unexpected {unexpected}")

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        gumbel_noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        output_hidden_states: bool = False,
        labels: torch.Tensor | None = None,
    ) -> QuietStarOutput:
        """One training call.

        Args:
            input_ids: (B, n) right-padded token ids.
            attention_mask: (B, n), 1 = real token; defaults to all ones.
            gumbel_noise: (N-3, B*n_passes, n, V) noise added to the logits of thought step k, exactly as the
                official code adds its noise; without it, noise comes from ``generator`` (torch's default if None).
            labels: (B, n) targets, -100 = ignored; defaults to ``input_ids``. Labels equal to the pad id are
                ignored too, as in the official code (whose collator passes a copy of ``input_ids``). The talk
                steps' teacher-forced inputs are always the true tokens ``input_ids``.
        """
        input_ids, attention_mask = self._check_inputs(input_ids, attention_mask, gumbel_noise, labels)
        return run_step(self, input_ids, attention_mask, gumbel_noise, generator, output_hidden_states, labels)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 max_new_tokens: int = 32, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                 eos_token_id: int | list[int] | None = None, generator: torch.Generator | None = None,
                 streamer=None):
        """Thinking generation: before each new token, a thought (start, N-3 sampled tokens, end) on top of a KV
        cache kept across tokens, and the mixed prediction.

        Args:
            input_ids: (B, L) prompts, left-padded when their lengths differ.
            attention_mask: (B, L), 1 = real token, zeros only on the left; defaults to all ones.
            do_sample, temperature, top_p: greedy (default), or sampling from softmax(logits / temperature) within
                the top-p nucleus. The thoughts are always sampled, as in training (``QuietStarConfig``).
            eos_token_id: an id or a list of ids (default: the model's generation config's, else its config's); a
                row finishes at any of them and then repeats the first; generation stops when every row has.
            streamer: a transformers ``TextStreamer``-like object: ``put`` gets the prompts, then each new token
                (B,), and ``end`` is called at the end.

        Never emits the thought delimiters. Returns ``GenerateOutput(sequences (B, L + new), thoughts
        (B, new, N-3))``."""
        from .generate import generate

        return generate(self, input_ids, attention_mask, max_new_tokens=max_new_tokens, do_sample=do_sample,
                        temperature=temperature, top_p=top_p, eos_token_id=eos_token_id, generator=generator,
                        streamer=streamer)

    def _check_inputs(self, input_ids, attention_mask, gumbel_noise, labels):
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            shape = getattr(input_ids, "shape", input_ids)
            raise ValueError(f"input_ids must be a (batch, seq_len) tensor, got {shape}")
        batch, seq_len = input_ids.shape
        settings = self.quietstar_config
        max_positions = getattr(self.model.config, "max_position_embeddings", None)
        last_position = seq_len - 1 + settings.num_steps - 1
        if max_positions is not None and last_position >= max_positions:
            raise ValueError(f"seq_len {seq_len} plus {settings.num_steps - 1} thought steps reaches position "
                             f"{last_position}, beyond the model's max_position_embeddings={max_positions}")
        if seq_len < settings.n_ahead_talk + 2:
            raise ValueError(f"seq_len {seq_len} is too short for n_ahead_talk={settings.n_ahead_talk}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if tuple(attention_mask.shape) != (batch, seq_len):
            raise ValueError(f"attention_mask must have shape {(batch, seq_len)}, got {tuple(attention_mask.shape)}")
        mask = attention_mask.bool()
        if bool((mask[:, 1:] & ~mask[:, :-1]).any()):
            raise ValueError("attention_mask must be right-padded (ones, then zeros), as the official collator pads")
        vocab = self.model.get_output_embeddings().weight.shape[0]
        if labels is not None:
            if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != (batch, seq_len):
                raise ValueError(f"labels must be a {(batch, seq_len)} tensor like input_ids, got "
                                 f"{tuple(getattr(labels, 'shape', ())) or labels!r}")
            if labels.dtype != torch.long:
                raise ValueError(f"labels must be int64 token ids, got {labels.dtype}")
            if bool(((labels != -100) & ((labels < 0) | (labels >= vocab))).any()):
                raise ValueError(f"labels must be token ids in [0, {vocab}) or -100 (ignored)")
        if gumbel_noise is not None:
            expected = (settings.num_thought_tokens, batch * settings.n_passes, seq_len, vocab)
            if tuple(gumbel_noise.shape) != expected:
                raise ValueError(f"gumbel_noise must have shape {expected}, got {tuple(gumbel_noise.shape)}")
        return input_ids, attention_mask
