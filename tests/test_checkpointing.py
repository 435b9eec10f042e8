"""Activation checkpointing through the thought loop: a checkpointed step recomputes every decoder layer of every
step in the backward, keeps far fewer activations, and gives the numbers of the step without it (both paths, the
HF switch, the official test vector); modes that cannot keep the cache semantics are refused."""
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the HF integration tests need transformers")

from test_quietstar import (  # noqa: E402
    FAMILIES, FIELDS, _check_against_official, _run_step, _tiny_pair, assert_step_follows_the_flash_attention_rule,
)

from quietstar_fast import QuietStar  # noqa: E402

PATHS = {"reference": 0, "fast": 1}


def _model(family: str, impl: str, dtype: torch.dtype = torch.float64, checkpointing: str | None = None):
    model = _tiny_pair(family, dtype=dtype)[PATHS[impl]]
    model.activation_checkpointing = checkpointing
    return model


class _AttentionCalls:
    """Counts the calls of every attention module of the model: a recomputed layer calls its attention again."""

    def __init__(self, model: QuietStar):
        self.count = 0
        self.handles = [layer.self_attn.register_forward_pre_hook(self._seen)
                        for layer in model.model.get_decoder().layers]

    def _seen(self, *_):
        self.count += 1


def _relative(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).norm() / expected.norm().clamp_min(1e-300))


def _assert_same_step(got, got_grads, expected, expected_grads, tolerance: float, label: str):
    assert torch.equal(got.thought_tokens, expected.thought_tokens)
    for field in FIELDS:
        error = _relative(getattr(got, field).detach(), getattr(expected, field).detach())
        assert error <= tolerance, f"{label} {field}: relative difference {error:.2e}"
    for name, grad in expected_grads.items():
        error = _relative(got_grads[name], grad)
        assert error <= tolerance, f"{label} {name} gradient: relative difference {error:.2e}"


@pytest.mark.parametrize("impl", sorted(PATHS))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_checkpointed_step_equals_the_step_without_it_in_float64(family, impl):
    """The recompute replays the cache (the same earlier keys, nothing appended): every value and gradient equals the
    step without checkpointing (measured: identical values, gradients within 2e-16 relative, from the order in which
    autograd sums them). Each attention runs twice: once in the forward, once in the recompute."""
    baseline = _model(family, impl)
    baseline_calls = _AttentionCalls(baseline)
    expected, expected_grads = _run_step(baseline, torch.float64)
    model = _model(family, impl, checkpointing="layer")
    calls = _AttentionCalls(model)
    got, got_grads = _run_step(model, torch.float64)
    _assert_same_step(got, got_grads, expected, expected_grads, 1e-10, f"{family} {impl}")
    assert baseline_calls.count > 0 and calls.count == 2 * baseline_calls.count


def test_checkpointed_step_keeps_fewer_activations():
    """The tensors the forward keeps for the backward: with every layer checkpointed, only each layer-step's input
    (and what lives outside the layers) is kept; the bound (a third) is the issue's memory target for the step."""
    def kept_bytes(checkpointing):
        model = _model("llama", "fast", torch.float32, checkpointing)
        kept = []

        def pack(tensor):
            kept.append(tensor.untyped_storage().nbytes())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            ids = torch.randint(1, 95, (2, 64), generator=torch.Generator().manual_seed(0))
            model(ids).loss.backward()
        return sum(kept)

    without, with_checkpointing = kept_bytes(None), kept_bytes("layer")
    assert with_checkpointing <= without / 3, (with_checkpointing, without)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_checkpointed_fast_step_in_float32_follows_the_flash_attention_rule(family):
    """fp32: the checkpointed fast step against the fp64 reference, under the rule of the step without it."""
    assert_step_follows_the_flash_attention_rule(
        family, _run_step(_model(family, "fast", torch.float32, "layer"), torch.float32),
        _run_step(_model(family, "reference", torch.float32), torch.float32), torch.float32)


@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_checkpointed_step_reproduces_the_official_code(impl):
    _check_against_official("nonzero", impl, "torch" if impl == "fast" else "auto",
                            options=(("activation_checkpointing", "layer"),))


def test_the_hf_switch_is_honoured_and_left_as_it_was():
    """model.gradient_checkpointing_enable (non-reentrant) checkpoints the layers it marks, with the cache kept; the
    switch and the layers' forward are as before after the call."""
    expected, expected_grads = _run_step(_model("llama", "fast"), torch.float64)
    model = _model("llama", "fast")
    model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    calls = _AttentionCalls(model)
    got, got_grads = _run_step(model, torch.float64)
    _assert_same_step(got, got_grads, expected, expected_grads, 1e-10, "hf switch")
    layers = model.model.get_decoder().layers
    assert calls.count % (2 * len(layers)) == 0
    assert all(layer.gradient_checkpointing for layer in layers)
    assert all("forward" not in vars(layer) for layer in layers)


def test_when_layers_are_recomputed():
    """An explicit mode recomputes whenever gradients are computed, in eval mode too (from_pretrained returns a model
    in eval mode); transformers' switch only in training mode, as transformers applies it; never under no_grad."""
    ids = torch.randint(1, 95, (1, 12))

    def attention_calls(model, *, train: bool, grad: bool) -> tuple[int, int]:
        """(calls in the forward, calls in forward + backward)."""
        calls = _AttentionCalls(model)
        model.train(train)
        with torch.set_grad_enabled(grad):
            out = model(ids)
        forward = calls.count
        if grad:
            out.loss.backward()
        return forward, calls.count

    explicit = _model("llama", "fast", checkpointing="layer")
    forward, total = attention_calls(explicit, train=False, grad=True)
    assert total == 2 * forward
    forward, total = attention_calls(explicit, train=True, grad=False)
    assert total == forward
    switched = _model("llama", "fast")
    switched.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    forward, total = attention_calls(switched, train=False, grad=True)
    assert total == forward
    forward, total = attention_calls(switched, train=True, grad=True)
    assert total == 2 * forward


def test_modes_that_cannot_keep_the_cache_are_refused():
    with pytest.raises(ValueError, match="activation_checkpointing must be one of"):
        QuietStar(_model("llama", "fast").model, start_token_id=95, end_token_id=96, init_token_id=5,
                  activation_checkpointing="step")
    model = _model("llama", "fast")
    model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    with pytest.raises(ValueError, match="use_reentrant=True"):
        model(torch.randint(1, 95, (1, 12)))
    assert all("forward" not in vars(layer) for layer in model.model.get_decoder().layers)


def test_checkpointed_bf16_step_is_bitwise_the_step_without_it():
    """The recompute runs the same bf16 ops on the same inputs: loss and gradients are bitwise those without it."""
    expected, expected_grads = _run_step(_model("llama", "fast", torch.bfloat16), torch.bfloat16, True)
    got, got_grads = _run_step(_model("llama", "fast", torch.bfloat16, "layer"), torch.bfloat16, True)
    assert torch.equal(got.loss, expected.loss)
    for name, grad in expected_grads.items():
        assert torch.equal(got_grads[name], grad), name
