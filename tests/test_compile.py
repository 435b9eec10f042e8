"""torch.compile(fullgraph=True) and torch.export with the ops: no graph breaks, same numbers as eager.

The torch backend is traced; the Triton kernels (interpreted on CPU) and the CUDA kernels (on a GPU) are
torch.library custom ops with fake kernels and registered autograd, opaque to the compiler.
"""
import os

import pytest
import torch
import torch._inductor.config

from backends import CUDA
from quietstar_fast import mixed_cross_entropy, sample_thought_tokens, thought_attention

transformers = pytest.importorskip("transformers", reason="the model tests need transformers")

from quietstar_fast.hf import ThoughtLayout, apply_quietstar_kernels, thought_call_kwargs  # noqa: E402

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
BACKENDS = ["torch", "triton"] + ([CUDA] if ON_GPU else [])
ATTENTION_BACKENDS = [*BACKENDS, "sdpa"]


# Inductor's CPU code generator still emits at::vec code for some kernels when ATen is held to its scalar kernels
# (ATEN_CPU_CAPABILITY=default), and that C++ fails to compile (torch 2.13); scalar code (simdlen 1) compiles.
_INDUCTOR_OPTIONS = {"cpp.simdlen": 1} if os.environ.get("ATEN_CPU_CAPABILITY") == "default" else {}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    with torch._inductor.config.patch(_INDUCTOR_OPTIONS):
        yield
    torch._dynamo.reset()


def _leaves(*shapes, dtype=torch.float32):
    return [torch.randn(*shape, device=DEVICE, dtype=dtype, requires_grad=True) for shape in shapes]


def _eager_and_compiled(fn, leaves, *constants):
    """(value, grads) of fn in eager mode and compiled with fullgraph=True (a graph break raises)."""
    results = []
    for runner in (fn, torch.compile(fn, fullgraph=True)):
        value = runner(*leaves, *constants)
        results.append((value.detach(), torch.autograd.grad(value, leaves)))
    return results


def _assert_same(eager, compiled):
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-5)
    for got, want in zip(compiled[1], eager[1]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [9, None], ids=lambda w: f"W{w}")
@pytest.mark.parametrize("impl", ATTENTION_BACKENDS)
def test_thought_attention_compiles_without_graph_breaks(impl, window):
    valid = torch.ones(2, 16, dtype=torch.bool, device=DEVICE)
    valid[1, 12:] = False

    def fn(q, k, v, valid):
        out, lse = thought_attention(q, k, v, prefix_len=16, key_padding_mask=valid, sliding_window=window,
                                     return_lse=True, impl=impl)
        return out.float().square().sum() + lse.masked_fill(lse.isinf(), 0).sum()

    leaves = _leaves((2, 4, 32, 64), (2, 2, 48, 64), (2, 2, 48, 64))
    _assert_same(*_eager_and_compiled(fn, leaves, valid))


@pytest.mark.parametrize("impl", BACKENDS)
def test_lm_head_ops_compile_without_graph_breaks(impl):
    targets = torch.randint(0, 300, (24,), device=DEVICE)
    targets[:3] = -100
    noise = -torch.empty(24, 300, device=DEVICE).exponential_().log()

    def fn(h, h_thought, w, mix, targets, noise):
        loss = mixed_cross_entropy(h, w, targets, h_thought=h_thought, mix_weight=mix, impl=impl)
        _, logprob = sample_thought_tokens(h_thought, w, gumbel_noise=noise, banned_token_ids=[0, 7], impl=impl)
        return loss.sum() + logprob.sum()

    leaves = _leaves((24, 32), (24, 32), (300, 32), (24,))
    _assert_same(*_eager_and_compiled(fn, leaves, targets, noise))


def _tiny_llama():
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      attn_implementation="sdpa")
    torch.manual_seed(0)
    return apply_quietstar_kernels(transformers.LlamaForCausalLM(config)).to(DEVICE).eval()


class ThoughtCall(torch.nn.Module):
    """One multi-step thought call of the model: the prefix and a stream steps in one sequence, as the fast path's
    talk call makes it, through the thought attention (no mask is built)."""

    def __init__(self, model, prefix_len: int, impl: str):
        super().__init__()
        self.model, self.prefix_len, self.impl = model, prefix_len, impl

    def forward(self, inputs_embeds, position_ids, key_padding_mask):
        layout = ThoughtLayout(self.prefix_len, key_padding_mask, impl=self.impl)
        return self.model(inputs_embeds=inputs_embeds, position_ids=position_ids, use_cache=False,
                          **thought_call_kwargs(layout)).logits


def _thought_call_inputs(n=12, steps=3):
    embeds = torch.randn(2, steps * n, 32, device=DEVICE)
    positions = (torch.arange(n, device=DEVICE).repeat(steps) + torch.arange(steps, device=DEVICE).repeat_interleave(n))
    valid = torch.ones(2, n, dtype=torch.bool, device=DEVICE)
    valid[1, 9:] = False
    return embeds, positions[None].expand(2, -1), valid


@pytest.mark.parametrize("impl", ATTENTION_BACKENDS)
def test_model_with_thought_attention_compiles_without_graph_breaks(impl):
    call = ThoughtCall(_tiny_llama(), 12, impl)
    inputs = _thought_call_inputs()
    with torch.no_grad():
        eager = call(*inputs)
        compiled = torch.compile(call, fullgraph=True)(*inputs)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


def test_thought_call_exports():
    """torch.export of an inference step (the torch backend, which runs anywhere)."""
    call = ThoughtCall(_tiny_llama(), 12, "torch")
    inputs = _thought_call_inputs()
    with torch.no_grad():
        exported = torch.export.export(call, inputs)
        torch.testing.assert_close(exported.module()(*inputs), call(*inputs), rtol=1e-4, atol=1e-4)
