"""Model families: what the support check reads and refuses, each family's attention windows, the drop-in against
the model's own SDPA layer by layer on ordinary calls, and Gemma's scaled embeddings in the meta-token init. (The
step equality and generation tests of every family are in test_quietstar.py, parametrized over FAMILIES.)"""
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the HF integration tests need transformers")

from test_quietstar import FAMILIES, _tiny_pair  # noqa: E402

from quietstar_fast import QuietStar, apply_quietstar_kernels  # noqa: E402
from quietstar_fast.model_support import layer_type_windows, unsupported_reasons  # noqa: E402

COMMON = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, eos_token_id=0,
              attn_implementation="sdpa")


def _family_model(family: str) -> torch.nn.Module:
    config_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(0)
    return model_cls(config_cls(**COMMON, **extra)).eval()


def _layer_outputs(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    outputs = []
    hooks = [layer.register_forward_hook(lambda module, args, out: outputs.append(
        (out[0] if isinstance(out, tuple) else out).detach().clone())) for layer in model.get_decoder().layers]
    try:
        with torch.no_grad():
            logits = model(ids, attention_mask=mask).logits
    finally:
        for hook in hooks:
            hook.remove()
    return outputs + [logits]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_is_supported(family):
    assert unsupported_reasons(_family_model(family)) == []


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_drop_in_equals_the_models_own_sdpa_layer_by_layer(family):
    """Ordinary calls (no thought layout) through the drop-in are the model's own SDPA attention, layer by layer,
    with left padding (as batched generation pads) and right padding."""
    model = _family_model(family)
    ids = torch.randint(1, 95, (3, 11))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left-padded row
    mask[2, 7:] = 0  # right-padded row
    expected = _layer_outputs(model, ids, mask)
    apply_quietstar_kernels(model)
    got = _layer_outputs(model, ids, mask)
    assert len(got) == len(expected) == model.config.num_hidden_layers + 1
    for index, (value, reference) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(value, reference, rtol=0, atol=0, msg=f"{family} layer {index}")


def test_layer_type_windows_follow_each_familys_config():
    windows = {family: layer_type_windows(_family_model(family).config) for family in FAMILIES}
    assert windows["llama"] == windows["olmo2"] == windows["phi3"] == {"full_attention": None}
    assert windows["mistral"] == {"full_attention": 7}  # every layer applies the config's window
    assert windows["qwen2"] == {"full_attention": None}  # use_sliding_window=False
    assert windows["qwen3"] == windows["gemma3"] == {"full_attention": None, "sliding_attention": 6}


def test_gemma_meta_embeddings_start_from_the_scaled_input_embedding():
    """Gemma's embedding module multiplies by sqrt(D): the meta tokens must start from what the model is fed, not from
    the raw weight row, or they would enter 5.7x (sqrt(32)) too small."""
    quiet = _tiny_pair("gemma3")[1]
    embed = quiet.model.get_input_embeddings()
    fed = embed(torch.tensor([5]))[0]
    scale = quiet.quietstar_config.embedding_scale
    torch.testing.assert_close(scale * quiet.start_embedding[0], fed)
    assert not torch.allclose(fed, embed.weight[5])


def _refusal(model) -> str:
    with pytest.raises(ValueError) as refused:
        QuietStar(model, start_token_id=95, end_token_id=96, init_token_id=5)
    return str(refused.value)


def test_models_lacking_what_the_thought_attention_needs_are_refused_by_name():
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=97, n_layer=1, n_embd=16, n_head=2,
                                                                bos_token_id=0, eos_token_id=0))
    message = _refusal(gpt2)
    assert "model_type='gpt2'" in message and "rotary embedding" in message
    gemma2 = transformers.Gemma2ForCausalLM(transformers.Gemma2Config(**{**COMMON, "attn_implementation": "eager"},
                                                                      head_dim=8))
    message = _refusal(gemma2)
    assert "attn_logit_softcapping=50.0" in message and "final_logit_softcapping=30.0" in message

    class EagerOnlyLlama(transformers.LlamaForCausalLM):
        _supports_attention_backend = False

    message = _refusal(EagerOnlyLlama(transformers.LlamaConfig(**COMMON)))
    assert "attention interface" in message
    gpt_oss = transformers.GptOssForCausalLM(transformers.GptOssConfig(**{**COMMON, "intermediate_size": 32,
                                                                          "attn_implementation": "eager"},
                                                                       head_dim=8, num_local_experts=2,
                                                                       num_experts_per_tok=1))
    assert "sinks" in _refusal(gpt_oss)
    with pytest.raises(ValueError, match="not a transformers causal LM"):
        QuietStar(torch.nn.Linear(2, 2), start_token_id=0, end_token_id=1, init_token_id=0)


def test_score_changing_attention_arguments_are_refused_in_thought_calls():
    """A model the capability check let through that passes attention sinks or a position bias to its attention
    function gets an error in a thought call, not an attention without them."""
    from quietstar_fast.hf import ThoughtLayout, _thought_attention_forward

    q = k = v = torch.randn(1, 2, 4, 8)
    layout = ThoughtLayout(prefix_len=4, impl="torch")
    for name in ("s_aux", "position_bias"):
        with pytest.raises(ValueError, match=name):
            _thought_attention_forward(None, q, k, v, None, quietstar_layout=layout, **{name: torch.zeros(2)})


def test_llama3_style_eos_list_gives_the_first_as_pad():
    """Llama 3.x configs list several eos ids and no pad id: labels equal to the first are ignored, as the official
    code ignores its pad (= eos)."""
    config = transformers.LlamaConfig(**{**COMMON, "pad_token_id": None, "eos_token_id": [3, 7]})
    quiet = QuietStar(transformers.LlamaForCausalLM(config), start_token_id=95, end_token_id=96, init_token_id=5,
                      n_ahead=4, n_ahead_talk=2, n_passes=1, kernel_impl="torch")
    assert quiet.pad_token_id == 3
    ids = torch.randint(8, 95, (1, 10))
    ids[0, 4] = 3
    out = quiet(ids, generator=torch.Generator().manual_seed(0))
    assert float(out.base_nll[0, 3]) == 0.0 and bool((out.base_nll[0, torch.arange(9) != 3] != 0).all())
