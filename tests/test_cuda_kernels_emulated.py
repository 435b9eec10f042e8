"""The CUDA kernels of csrc/, run on the CPU through the emulation (tests/emulated_cuda.py), held to the same rules
as every backend: the attention, LM-head and official-vector tests run again with impl="cuda".

This checks the kernels' own code (indexing, masks, tiles, synchronisation points, launch geometry, the op layer
and the autograd wrappers); it cannot check data races, speed or device-only compilation, which the nvcc build in
CI and the GPU check script cover.
"""
import pytest
import torch

import test_attention_backends as attention_tests
import test_loss_backends as loss_tests
import test_loss_official_vector as official_tests
from emulated_cuda import emulation_unavailable_reason, use_emulated_cuda_kernels

pytestmark = pytest.mark.skipif(emulation_unavailable_reason() is not None,
                                reason=f"CUDA emulation: {emulation_unavailable_reason()}")
CPU = "cpu"


@pytest.fixture
def emulated(monkeypatch):
    use_emulated_cuda_kernels(monkeypatch)


@pytest.mark.parametrize("dtype", attention_tests.DTYPES, ids=str)
@pytest.mark.parametrize("case", attention_tests.CASES, ids=str)
def test_attention_matches_reference(case, dtype, emulated):
    attention_tests._check_against_reference(case, dtype, "cuda", CPU)


@pytest.mark.parametrize("dtype", attention_tests.SIXTEEN_BIT, ids=str)
@pytest.mark.parametrize("case", attention_tests.FOLDED_CASES, ids=str)
def test_attention_folded_query_steps(case, dtype, emulated):
    attention_tests.test_folded_query_steps_sum_key_gradients_in_fp32("cuda", case, dtype, CPU)


def test_attention_bfloat16(emulated):
    attention_tests.test_bfloat16("cuda", CPU)


def test_attention_noncontiguous_inputs(emulated):
    attention_tests.test_noncontiguous_inputs("cuda", CPU)


@pytest.mark.parametrize("dtype", loss_tests.DTYPES, ids=str)
@pytest.mark.parametrize("case", loss_tests.CE_CASES, ids=str)
def test_mixed_cross_entropy_matches_reference(case, dtype, emulated):
    loss_tests.test_mixed_cross_entropy_matches_reference("cuda", case, dtype, CPU)


def test_ignored_rows_and_zero_mix_weight(emulated):
    loss_tests.test_ignored_rows_get_no_gradient("cuda", CPU)
    loss_tests.test_zero_mix_weight_is_the_base_loss("cuda", CPU)


@pytest.mark.parametrize("dtype", loss_tests.DTYPES, ids=str)
@pytest.mark.parametrize("shape", loss_tests.SAMPLE_CASES, ids=str)
def test_sampling_with_given_noise_matches_reference(shape, dtype, emulated):
    loss_tests.test_sampling_with_given_noise_matches_reference("cuda", shape, dtype, CPU)


def test_banned_ids_are_never_sampled(emulated):
    loss_tests.test_banned_ids_are_never_sampled("cuda", CPU)


@pytest.mark.parametrize("sample_temperature", [None, 2.0])
def test_generated_noise_samples_the_right_distribution(sample_temperature, emulated):
    # The kernel draws its Gumbel noise from Philox4x32-10 keyed by a seed tensor: the frequencies test it.
    loss_tests.test_generated_noise_samples_the_right_distribution("cuda", sample_temperature, CPU)


def test_generator_seeds_are_reproducible(emulated):
    loss_tests.test_generator_seeds_are_reproducible("cuda", CPU)


@pytest.mark.parametrize("name", ["official_init", "nonzero"])
def test_official_vector_nlls(name, emulated):
    official_tests.test_base_and_talk_nll(name, "cuda", CPU)


def test_official_vector_thought_tokens_and_logprobs(emulated):
    official_tests.test_thought_tokens_and_policy_logprobs("cuda", CPU)


def test_vocabulary_slices_are_merged(emulated):
    """Few emulated SMs make the forward split the vocabulary: the per-slice partials must merge to the same
    statistics as one slice would give (the CE cases above pass through this path too)."""
    from emulated_cuda import emulated_ops

    hidden, weight = torch.randn(5, 32), torch.randn(3000, 32)
    targets = torch.randint(0, 3000, (5,))
    lse, picked, _ = emulated_ops().linear_softmax_fwd(hidden, weight, targets, None, None, None, 1.0, 1.0)
    logits = hidden.double() @ weight.double().T
    torch.testing.assert_close(lse.double(), torch.logsumexp(logits, -1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(picked.double(), logits.gather(1, targets[:, None]).squeeze(1), rtol=1e-5, atol=1e-5)


def _lm_head_operands(layout: str, dtype: torch.dtype, rows: int = 70, hidden: int = 136, vocab: int = 300):
    """hidden (rows, D) and weight (vocab, D) in ``layout``: "contiguous"; "misaligned_pointer" (both start one
    element into their storage, as a row slice of an odd-width tensor does); "padded_rows" (row stride D + 5);
    "odd_hidden" (contiguous, D not a multiple of 8). The 16-bit kernels copy chunks with cp.async only when every
    row is 16-byte aligned, so all but "contiguous" take the synchronous loads."""
    if layout == "odd_hidden":
        hidden -= 3
    generator = torch.Generator().manual_seed(1)

    def make(n):
        values = torch.randn(n, hidden, generator=generator) / hidden**0.25
        if layout == "misaligned_pointer":
            storage = torch.empty(n * hidden + 1, dtype=dtype)
            storage[1:] = values.flatten().to(dtype)
            return storage[1:].view(n, hidden)
        if layout == "padded_rows":
            wide = torch.zeros(n, hidden + 5, dtype=dtype)
            wide[:, :hidden] = values.to(dtype)
            return wide[:, :hidden]
        return values.to(dtype)

    return make(rows), make(vocab)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "misaligned_pointer", "padded_rows", "odd_hidden"])
def test_lm_head_kernels_take_any_row_alignment(layout, dtype, emulated):
    """Forward statistics and the logit gradient over several hidden chunks (D = 136 or 133 with 64-wide chunks, a
    partial last chunk, a partial row block and vocabulary tile), for layouts cp.async cannot copy: against the fp64
    logits of the same rounded inputs, and bit for bit the contiguous layout's results where D is the same."""
    from emulated_cuda import emulated_ops

    ops, inv_t = emulated_ops(), 0.5
    hidden, weight = _lm_head_operands(layout, dtype)
    targets = torch.randint(0, weight.shape[0], (hidden.shape[0],), generator=torch.Generator().manual_seed(2))
    coef = torch.linspace(-1, 2, hidden.shape[0])
    lse, picked, _ = ops.linear_softmax_fwd(hidden, weight, targets, None, None, None, inv_t, 1.0)
    grad = ops.linear_softmax_grad(hidden, weight, lse, targets, coef, None, inv_t)

    logits = hidden.double() @ weight.double().T
    expected_lse = torch.logsumexp(logits * inv_t, -1)
    torch.testing.assert_close(lse.double(), expected_lse, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(picked.double(), logits.gather(1, targets[:, None]).squeeze(1), rtol=1e-5, atol=1e-5)
    probs = torch.softmax(logits * inv_t, -1)
    expected_grad = coef.double()[:, None] * inv_t * (probs - torch.nn.functional.one_hot(targets, logits.shape[1]))
    rounding = {torch.float32: 1e-5, torch.float16: 2**-10, torch.bfloat16: 2**-7}[dtype]
    torch.testing.assert_close(grad.double(), expected_grad, rtol=rounding, atol=1e-6)

    if layout != "odd_hidden":
        hidden_c, weight_c = _lm_head_operands("contiguous", dtype)
        assert torch.equal(hidden_c, hidden) and torch.equal(weight_c, weight)
        lse_c, picked_c, _ = ops.linear_softmax_fwd(hidden_c, weight_c, targets, None, None, None, inv_t, 1.0)
        grad_c = ops.linear_softmax_grad(hidden_c, weight_c, lse_c, targets, coef, None, inv_t)
        assert torch.equal(lse, lse_c) and torch.equal(picked, picked_c) and torch.equal(grad, grad_c)


def test_quietstar_fast_step_reproduces_the_official_code(emulated):
    """The whole training step with kernel_impl="cuda": the thought attention inside the HF model and the fused
    LM-head ops, against the official implementation's numbers."""
    pytest.importorskip("transformers", reason="the Quiet-STaR step needs transformers")
    import test_quietstar as quietstar_tests

    quietstar_tests._check_against_official("nonzero", "fast", "cuda", device=CPU)


_TENSOR_CORE_KERNELS = {"thought_attention_fwd_mma", "thought_attention_bwd_dq_mma",
                        "thought_attention_bwd_prefix_dkdv_mma", "thought_attention_bwd_stream_dkdv_mma"}
_FMA_KERNELS = {"thought_attention_fwd_fma", "thought_attention_bwd_dq_fma", "thought_attention_bwd_prefix_dkdv_fma",
                "thought_attention_bwd_stream_dkdv_fma"}


def _attention_kernels_launched(dtype: torch.dtype, head_dim: int, misaligned: bool) -> set[str]:
    """The kernels one forward + backward of a small problem launches."""
    from emulated_cuda import launched_kernels
    from quietstar_fast import thought_attention

    problem = attention_tests.make_problem(attention_tests.Case(1, 2, 1, 21, 2, 1, head_dim, "right"), dtype, CPU)
    q, k, v = problem.q, problem.k, problem.v
    if misaligned:  # one element past a 16-byte boundary: cp.async cannot copy these rows
        q = torch.cat([q.new_zeros(*q.shape[:-1], 1), q], -1)[..., 1:]
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    launched_kernels()
    out = thought_attention(q, k, v, prefix_len=21, key_padding_mask=problem.mask, impl="cuda")
    out.float().square().sum().backward()
    return set(launched_kernels())


@pytest.mark.parametrize("dtype, head_dim, misaligned, tensor_cores", [
    (torch.float16, 64, False, True), (torch.bfloat16, 80, False, True), (torch.float16, 20, False, False),
    (torch.bfloat16, 64, True, False), (torch.float32, 64, False, False)], ids=str)
def test_launchers_take_tensor_cores_where_cp_async_can_copy(dtype, head_dim, misaligned, tensor_cores, emulated):
    launched = _attention_kernels_launched(dtype, head_dim, misaligned)
    assert launched >= (_TENSOR_CORE_KERNELS if tensor_cores else _FMA_KERNELS)
    assert not launched & (_FMA_KERNELS if tensor_cores else _TENSOR_CORE_KERNELS)
    assert "thought_attention_bwd_preprocess" in launched


def test_attention_16bit_on_the_fma_path(emulated):
    # A head dim that is not a multiple of 8 takes the exact CUDA-core kernels; they must hold the same rule.
    attention_tests._check_against_reference(attention_tests.Case(2, 4, 2, 37, 3, 2, 20, "right", window=16),
                                             torch.bfloat16, "cuda", CPU)


def test_attention_over_many_key_tiles(emulated):
    # Several prefix tiles per block keep both pipeline stages in use (and the emulation's race check busy);
    # the other cases stop at two or three tiles.
    attention_tests._check_against_reference(attention_tests.Case(1, 2, 1, 300, 2, 2, 64, "right"), torch.float16,
                                             "cuda", CPU)
