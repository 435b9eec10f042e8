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
