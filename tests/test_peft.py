"""QuietStar on a LoRA (PEFT) model: the trainable set, gradients equal to an independent LoRA computation, no LM-head
weight gradient computed, checkpointing, saving only what changed, and the refusals."""
import pytest
import torch
from torch.nn.utils import parametrize

transformers = pytest.importorskip("transformers", reason="the HF integration tests need transformers")
peft = pytest.importorskip("peft", reason="the LoRA tests need peft (pinned in requirements-cpu.txt)")

from test_loss_backends import _ShapesMade  # noqa: E402
from test_quietstar import _run_step  # noqa: E402

from quietstar_fast import QuietStar  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA = 4, 8
OWN = ("start_embedding", "end_embedding", "talk_head.")


def _base_model(dtype: torch.dtype = torch.float64, seed: int = 0):
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      tie_word_embeddings=False, pad_token_id=0, eos_token_id=0,
                                      attn_implementation="sdpa")
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).to(dtype)


def _quietstar(model, **options) -> QuietStar:
    torch.manual_seed(2)  # the mixing head's initialisation
    quiet = QuietStar(model, start_token_id=95, end_token_id=96, init_token_id=5, n_ahead=5, n_ahead_talk=3,
                      n_passes=2, kernel_impl="torch", **options)
    with torch.no_grad():  # a non-zero mixing head, so rewards and the policy loss are non-zero
        quiet.talk_head[0][4].weight.copy_(torch.linspace(-1, 1, quiet.talk_head[0][4].weight.numel()).view(1, -1))
    return quiet


def _lora_model(dtype: torch.dtype = torch.float64, **config):
    """A PEFT LoRA model whose B factors are non-zero (PEFT starts them at 0, where A gets no gradient)."""
    lora = peft.get_peft_model(_base_model(dtype), peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                                                                   target_modules=TARGETS, **config))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * 0.1)
    return lora


class _LowRankUpdate(torch.nn.Module):
    """weight -> weight + (alpha / r) * B @ A: LoRA written independently of PEFT, as a parametrization."""

    def __init__(self, lora_a: torch.Tensor, lora_b: torch.Tensor):
        super().__init__()
        self.lora_a = torch.nn.Parameter(lora_a.detach().clone())
        self.lora_b = torch.nn.Parameter(lora_b.detach().clone())

    def forward(self, weight):
        return weight + (ALPHA / RANK) * self.lora_b @ self.lora_a


def _manual_twin(lora) -> tuple[torch.nn.Module, dict]:
    """The base model with each LoRA pair as a parametrization; {PEFT parameter name: twin parameter}."""
    twin = _base_model(next(lora.parameters()).dtype)
    twin.requires_grad_(False)
    pairs = {}
    for name, module in lora.named_modules():
        if not hasattr(module, "lora_A") or "default" not in module.lora_A:
            continue
        path = name.removeprefix("base_model.model.")
        update = _LowRankUpdate(module.lora_A["default"].weight, module.lora_B["default"].weight)
        parametrize.register_parametrization(twin.get_submodule(path), "weight", update)
        pairs[f"model.{name}.lora_A.default.weight"] = update.lora_a
        pairs[f"model.{name}.lora_B.default.weight"] = update.lora_b
    return twin, pairs


def test_the_trainable_set_is_the_adapters_the_meta_embeddings_and_the_mixing_head():
    quiet = _quietstar(_lora_model())
    trainable = {name for name, p in quiet.named_parameters() if p.requires_grad}
    adapters = {name for name in trainable if ".lora_" in name}
    assert len(adapters) == 2 * len(TARGETS) * 2  # A and B, per target, per layer
    assert trainable - adapters == {name for name, _ in quiet.named_parameters() if name.startswith(OWN)}


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_lora_gradients_equal_an_independent_lora_computation(impl):
    """fp64: every adapter's gradient (and the meta embeddings' and mixing head's) equals the one of the same model
    written without PEFT (the low-rank update as a parametrization of the frozen weight) to 1e-10 relative; the two
    differ only in the order of the rounding (x W^T + s (x A^T) B^T against x (W + s B A)^T; measured <= 1.1e-15)."""
    lora = _lora_model()
    twin, pairs = _manual_twin(lora)
    got, got_grads = _run_step(_quietstar(lora, impl=impl), torch.float64)
    twin_quiet = _quietstar(twin, impl=impl)
    expected, _ = _run_step(twin_quiet, torch.float64)
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-10, atol=0)
    twin_grads = {name: p.grad for name, p in twin_quiet.named_parameters() if name.startswith(OWN)}
    twin_grads.update({name: parameter.grad for name, parameter in pairs.items()})
    assert {name for name, grad in got_grads.items() if grad is not None} == set(twin_grads)
    for name, expected_grad in twin_grads.items():
        error = float((got_grads[name] - expected_grad).norm() / expected_grad.norm())
        assert error <= 1e-10, f"{name}: relative difference {error:.2e}"


def test_the_frozen_lm_head_gets_no_weight_gradient_computed():
    quiet = _quietstar(_lora_model(torch.float32))
    weight = quiet.model.get_output_embeddings().weight
    out = quiet(torch.randint(1, 95, (2, 16)))
    with _ShapesMade() as made:
        out.loss.backward()
    assert weight.grad is None
    assert tuple(weight.shape) not in made.shapes


def test_lora_with_activation_checkpointing_gives_the_same_step():
    expected, expected_grads = _run_step(_quietstar(_lora_model()), torch.float64)
    got, got_grads = _run_step(_quietstar(_lora_model(), activation_checkpointing="layer"), torch.float64)
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-12, atol=0)
    for name, grad in expected_grads.items():
        if grad is not None:
            torch.testing.assert_close(got_grads[name], grad, rtol=1e-10, atol=1e-14, msg=name)


def test_trainable_state_dict_round_trips_only_what_changed():
    quiet = _quietstar(_lora_model())
    saved = quiet.trainable_state_dict()
    assert all(".lora_" in name or name.startswith(OWN) for name in saved)
    fresh = _quietstar(_lora_model())
    with torch.no_grad():
        for name, parameter in fresh.named_parameters():
            if parameter.requires_grad:
                parameter.add_(1.0)
    fresh.load_trainable_state_dict(saved)
    for name, value in fresh.trainable_state_dict().items():
        assert torch.equal(value, saved[name]), name
    with pytest.raises(ValueError, match="missing"):
        fresh.load_trainable_state_dict({k: v for k, v in saved.items() if k != "start_embedding"})


@pytest.mark.parametrize("target", ["lm_head", "embed_tokens"])
def test_adapters_on_the_embeddings_are_refused(target):
    lora = peft.get_peft_model(_base_model(), peft.LoraConfig(r=RANK, target_modules=["q_proj", target]))
    with pytest.raises(ValueError, match="carry a PEFT adapter"):
        _quietstar(lora)
    saved = peft.get_peft_model(_base_model(), peft.LoraConfig(r=RANK, target_modules=["q_proj"],
                                                               modules_to_save=[target]))
    with pytest.raises(ValueError, match="carry a PEFT adapter"):
        _quietstar(saved)


def test_a_peft_model_of_an_unsupported_family_is_refused():
    config = transformers.GPT2Config(vocab_size=97, n_embd=32, n_layer=1, n_head=2)
    lora = peft.get_peft_model(transformers.GPT2LMHeadModel(config), peft.LoraConfig(r=RANK, target_modules=["c_attn"]))
    with pytest.raises(ValueError, match="gpt2"):
        _quietstar(lora)


def test_thinking_generation_runs_on_a_lora_model():
    """Generation reads the adapted projections: a LoRA model with non-zero B generates what the same model with the
    adapters merged into the weights generates."""
    lora = _lora_model()
    prompt = torch.randint(1, 95, (2, 6), generator=torch.Generator().manual_seed(3))
    got = _quietstar(lora).generate(prompt, max_new_tokens=4)
    merged = _quietstar(_lora_model().merge_and_unload()).generate(prompt, max_new_tokens=4)
    assert torch.equal(got.sequences, merged.sequences)
    assert torch.equal(got.thoughts, merged.thoughts)
