"""The CUDA extension quietstar_fast._C on the CPU side: it imports without a GPU, registers its ops, validates
arguments with errors that name them, sends CPU tensors to impl="torch", and has fake kernels for torch.compile.

Without the extension (the CPU test environment) only the "not built" error is checked; CI builds the extension
against the CUDA build of torch in a second environment and runs this file there with
QUIETSTAR_REQUIRE_CUDA_EXTENSION=1, so a build that does not import fails instead of skipping.
"""
import pytest
import torch

from backends import REQUIRE_CUDA_EXTENSION
from quietstar_fast import mixed_cross_entropy, sample_thought_tokens, thought_attention
from quietstar_fast.cuda_ext import cuda_extension_available

built = pytest.mark.skipif(not (cuda_extension_available() or REQUIRE_CUDA_EXTENSION),
                           reason="quietstar_fast._C is not built in this environment")


def _attention_inputs(dtype=torch.float16, n=8, a=2, d=64):
    q = torch.randn(1, 4, n, d, dtype=dtype)
    k = torch.randn(1, 2, (a + 1) * n, d, dtype=dtype)
    return q, k, k.clone()


@pytest.mark.skipif(cuda_extension_available(), reason="the extension is built here")
def test_missing_extension_says_how_to_build_it():
    from quietstar_fast.cuda_ext import ops

    with pytest.raises(RuntimeError, match="QUIETSTAR_BUILD_CUDA=1 pip install --no-build-isolation"):
        ops()


def test_public_functions_send_cpu_tensors_to_torch():
    q, k, v = _attention_inputs()
    with pytest.raises(ValueError, match="impl='cuda' needs CUDA tensors.*impl='torch'"):
        thought_attention(q, k, v, prefix_len=8, impl="cuda")
    h, w = torch.randn(4, 16), torch.randn(10, 16)
    with pytest.raises(ValueError, match="impl='torch'"):
        mixed_cross_entropy(h, w, torch.zeros(4, dtype=torch.long), impl="cuda")
    with pytest.raises(ValueError, match="impl='torch'"):
        sample_thought_tokens(h, w, impl="cuda")


@built
def test_extension_imports_and_registers_its_ops():
    import quietstar_fast._C  # noqa: F401

    for name in ("thought_attention_fwd", "thought_attention_bwd", "linear_softmax_fwd", "linear_softmax_grad"):
        assert hasattr(torch.ops.quietstar_fast, name), name


def _ops():
    """The C++ ops themselves, without the Python-side checks that ``cuda_ext.ops()`` puts in front of them: these
    tests check the C++ op layer's own validation (run with -X faulthandler and -v by the GPU check, so that a crash
    names its case)."""
    from quietstar_fast.cuda_ext import ops

    return ops().raw


@built
def test_the_library_calls_the_ops_behind_python_checks():
    from quietstar_fast.cuda_checks import CheckedOps
    from quietstar_fast.cuda_ext import ops

    assert isinstance(ops(), CheckedOps) and ops().raw is torch.ops.quietstar_fast
    q, k, v = _attention_inputs()
    with pytest.raises(ValueError, match="quietstar_fast::thought_attention_fwd runs on CUDA tensors; q is on cpu"):
        ops().thought_attention_fwd(q, k, v, None, 8, 0, 0.125)


CPU_ERROR = r'runs on CUDA tensors; the inputs are on cpu\. Use impl="torch" for CPU tensors'


@built
def test_cpu_tensors_get_the_impl_torch_error():
    ops = _ops()
    q, k, v = _attention_inputs()
    with pytest.raises(RuntimeError, match=CPU_ERROR):
        ops.thought_attention_fwd(q, k, v, None, 8, 0, 0.125)
    lse = torch.zeros(1, 4, 8)
    with pytest.raises(RuntimeError, match=CPU_ERROR):
        ops.thought_attention_bwd(q, k, v, q, lse, q, None, None, 8, 0, 0.125)
    h, w = torch.randn(4, 16, dtype=torch.bfloat16), torch.randn(10, 16, dtype=torch.bfloat16)
    targets = torch.zeros(4, dtype=torch.long)
    with pytest.raises(RuntimeError, match=CPU_ERROR):
        ops.linear_softmax_fwd(h, w, targets, None, None, None, 1.0, 1.0)
    with pytest.raises(RuntimeError, match=CPU_ERROR):
        ops.linear_softmax_grad(h, w, torch.zeros(4), targets, torch.ones(4), None, 1.0)


def _attention_call(**changes):
    q, k, v = _attention_inputs()
    args = dict(q=q, k=k, v=v, key_valid=None, prefix_len=8, sliding_window=0, softmax_scale=0.125)
    args.update(changes)
    return lambda: _ops().thought_attention_fwd(*args.values())


ATTENTION_ERRORS = [
    (dict(q=torch.randn(4, 8, 64, dtype=torch.float16)), ValueError, "q must be 4-D"),
    (dict(q=torch.randn(1, 4, 8, 64, dtype=torch.float64)), TypeError, "q has dtype Double"),
    (dict(k=torch.randn(1, 2, 24, 64)), TypeError, "q, k and v must share one dtype"),
    (dict(v=torch.randn(1, 2, 16, 64, dtype=torch.float16)), ValueError, "k and v must have the same shape"),
    (dict(q=torch.randn(1, 3, 8, 64, dtype=torch.float16)), ValueError, r"q heads \(3\) must be a multiple"),
    (dict(prefix_len=7), ValueError, "not a multiple of prefix_len=7"),
    (dict(q=torch.randn(1, 4, 32, 64, dtype=torch.float16)), ValueError, "q has 32 queries but k only 24"),
    (dict(q=torch.randn(1, 4, 8, 160, dtype=torch.float16), k=torch.randn(1, 2, 24, 160, dtype=torch.float16),
          v=torch.randn(1, 2, 24, 160, dtype=torch.float16)), ValueError, "head_dim must be in"),
    (dict(key_valid=torch.ones(1, 8, dtype=torch.bool)), TypeError, "key_valid must have dtype Char"),
    (dict(key_valid=torch.ones(2, 8, dtype=torch.int8)), ValueError, r"key_valid must have shape \(batch"),
    (dict(sliding_window=-1), ValueError, "sliding_window must be >= 0"),
    (dict(softmax_scale=float("nan")), ValueError, "softmax_scale must be positive"),
]


@built
@pytest.mark.parametrize("changes, error, message", ATTENTION_ERRORS, ids=[m for _, _, m in ATTENTION_ERRORS])
def test_attention_op_validates_arguments(changes, error, message):
    with pytest.raises(error, match=message):
        _attention_call(**changes)()


@built
def test_attention_backward_validates_statistics():
    q, k, v = _attention_inputs()
    with pytest.raises(ValueError, match=r"lse must have shape \(batch, q heads, q tokens\)"):
        _ops().thought_attention_bwd(q, k, v, q, torch.zeros(1, 4, 9), q, None, None, 8, 0, 0.125)
    with pytest.raises(TypeError, match="grad_out must have dtype Half"):
        _ops().thought_attention_bwd(q, k, v, q, torch.zeros(1, 4, 8), q.float(), None, None, 8, 0, 0.125)


def _linear_call(**changes):
    args = dict(hidden=torch.randn(4, 16, dtype=torch.float16), weight=torch.randn(10, 16, dtype=torch.float16),
                targets=None, noise=None, seed=torch.zeros(1, dtype=torch.long), banned=None, inv_t=1.0,
                sample_scale=1.0)
    args.update(changes)
    return lambda: _ops().linear_softmax_fwd(*args.values())


LINEAR_ERRORS = [
    (dict(hidden=torch.randn(4, 2, 16, dtype=torch.float16)), ValueError, "hidden must be 2-D"),
    (dict(weight=torch.randn(10, 8, dtype=torch.float16)), ValueError, "weight has hidden size 8"),
    (dict(weight=torch.randn(10, 16)), TypeError, "weight must have dtype Half"),
    (dict(targets=torch.zeros(4, dtype=torch.int32)), TypeError, "targets must have dtype Long"),
    (dict(targets=torch.zeros(5, dtype=torch.long)), ValueError, r"targets must be a contiguous \(rows,\)"),
    (dict(noise=torch.randn(4, 9)), ValueError, r"noise must be \(rows, vocab\)"),
    (dict(seed=None), ValueError, "sampling without noise needs a seed"),
    (dict(banned=torch.zeros(9, dtype=torch.int8)), ValueError, r"banned must be a contiguous \(vocab,\)"),
    (dict(inv_t=0.0), ValueError, "inv_t must be positive"),
]


@built
@pytest.mark.parametrize("changes, error, message", LINEAR_ERRORS, ids=[m for _, _, m in LINEAR_ERRORS])
def test_linear_softmax_op_validates_arguments(changes, error, message):
    with pytest.raises(error, match=message):
        _linear_call(**changes)()


@built
def test_fake_kernels_give_output_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    ops = _ops()
    with FakeTensorMode():
        q = torch.empty(2, 4, 16, 64, dtype=torch.bfloat16, device="cuda")
        k = torch.empty(2, 2, 48, 64, dtype=torch.bfloat16, device="cuda")
        out, lse = ops.thought_attention_fwd(q, k, k, None, 8, 0, 0.125)
        assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == (2, 4, 16) and lse.dtype == torch.float32
        dq, dk, dv = ops.thought_attention_bwd(q, k, k, out, lse, out, None, None, 8, 0, 0.125)
        assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == k.shape
        h = torch.empty(5, 32, dtype=torch.float16, device="cuda")
        w = torch.empty(100, 32, dtype=torch.float16, device="cuda")
        lse, picked, tokens = ops.linear_softmax_fwd(h, w, None, None, torch.empty(1, dtype=torch.long,
                                                                                    device="cuda"), None, 1.0, 1.0)
        assert lse.shape == picked.shape == tokens.shape == (5,) and tokens.dtype == torch.int64
        grad = ops.linear_softmax_grad(h, w, lse, tokens, lse, None, 1.0)
        assert grad.shape == (5, 100) and grad.dtype == torch.float16
