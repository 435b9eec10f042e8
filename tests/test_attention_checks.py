"""Bad input gets a clear error naming the argument."""
import pytest
import torch

from quietstar_fast import thought_attention


def _inputs(b=1, hq=4, hkv=2, n=8, a=2, m=1, d=16, dtype=torch.float32):
    q = torch.randn(b, hq, m * n, d, dtype=dtype)
    k = torch.randn(b, hkv, (a + 1) * n, d, dtype=dtype)
    return q, k, k.clone()


def _call(q, k, v, **kwargs):
    kwargs.setdefault("prefix_len", 8)
    return thought_attention(q, k, v, **kwargs)


@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (lambda q, k, v: (q, k[:, :, :-3], v[:, :, :-3]), ValueError, "not a multiple of prefix_len"),
        (lambda q, k, v: (q[:, :, :-3], k, v), ValueError, "q has 5 queries"),
        (lambda q, k, v: (torch.cat([q] * 4, dim=2), k, v), ValueError, "only 24 keys"),
        (lambda q, k, v: (q[:, :3], k, v), ValueError, "multiple of k/v heads"),
        (lambda q, k, v: (q, k.double(), v), TypeError, "k has dtype"),
        (lambda q, k, v: (q.int(), k, v), TypeError, "q has dtype"),
        (lambda q, k, v: (q[0], k, v), ValueError, "q must be 4-D"),
        (lambda q, k, v: (q, k, v[..., :8]), ValueError, "k and v must have the same shape"),
        (lambda q, k, v: (q, k[..., :8], v[..., :8]), ValueError, "k has head_dim 8"),
        (lambda q, k, v: (q, k[:0], v[:0]), ValueError, "k has batch size 0"),
        (lambda q, k, v: (q.numpy(), k, v), TypeError, "q must be a torch.Tensor"),
    ],
)
def test_bad_tensors(mutate, error, match):
    with pytest.raises(error, match=match):
        _call(*mutate(*_inputs()))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(prefix_len=0), ValueError, "prefix_len must be a positive int"),
        (dict(prefix_len=8.0), ValueError, "prefix_len must be a positive int"),
        (dict(key_padding_mask=torch.ones(1, 7, dtype=torch.bool)), ValueError, "key_padding_mask must have shape"),
        (dict(key_padding_mask=torch.ones(1, 8)), TypeError, "key_padding_mask must be bool or integer"),
        (dict(key_padding_mask=[1] * 8), TypeError, "key_padding_mask must be a torch.Tensor"),
        (dict(sliding_window=0), ValueError, "sliding_window must be a positive int"),
        (dict(softmax_scale=float("nan")), ValueError, "softmax_scale must be a positive finite"),
        (dict(impl="cuda-please"), ValueError, "impl must be one of"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        _call(*_inputs(), **kwargs)


def test_triton_rejects_unsupported_head_dim_and_dtype(device):
    with pytest.raises(ValueError, match="head_dim <= 256"):
        _call(*(x.to(device) for x in _inputs(d=320)), impl="triton")
    with pytest.raises(TypeError, match="use impl='torch' for float64"):
        _call(*(x.to(device) for x in _inputs(dtype=torch.float64)), impl="triton")


def test_mixed_devices():
    # The meta device stands in for a second device: the checks run before any computation.
    q, k, v = _inputs()
    with pytest.raises(ValueError, match="k is on meta"):
        _call(q, k.to("meta"), v)
    with pytest.raises(ValueError, match="key_padding_mask is on meta"):
        _call(q, k, v, key_padding_mask=torch.ones(1, 8, dtype=torch.bool, device="meta"))


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="impl='triton' needs CUDA tensors"):
        _call(*_inputs(), impl="triton")
