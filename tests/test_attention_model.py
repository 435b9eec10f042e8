"""The bytes-and-launches model of thought attention (benchmarks/attention_model.py) against the code it models:
the launches of impl="sdpa" are counted on CPU (ops that write memory, tests/host_waits.py) and must equal the
model's formula, which grows with batch x KV heads (the stream part's loop), so a change that adds or removes
launches updates the model with it. The same call makes no host wait."""
import csv
import sys
from pathlib import Path

import pytest
import torch

from host_waits import HostWaits, KernelLaunches
from quietstar_fast import thought_attention

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import attention_model  # noqa: E402


@pytest.mark.parametrize("batch, kv_heads, group, query_steps", [(1, 1, 4, 1), (2, 3, 4, 1), (2, 1, 2, 1),
                                                                 (1, 2, 4, 2)])
def test_composite_launches_are_the_models(batch, kv_heads, group, query_steps):
    shape = attention_model.Shape(batch, kv_heads * group, kv_heads, n=16, a=3, m=query_steps, d=8)
    q = torch.randn(batch, shape.q_heads, query_steps * 16, 8, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(batch, kv_heads, 4 * 16, 8, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn_like(k, requires_grad=True)
    grad_out = torch.randn_like(q)
    with HostWaits() as waits:
        with KernelLaunches() as forward:
            out = thought_attention(q, k, v, prefix_len=16, impl="sdpa")
        with KernelLaunches() as backward:
            torch.autograd.grad(out, (q, k, v), grad_out)
    assert (len(forward.ops), len(backward.ops)) == attention_model.composite_launches(shape, device="cpu"), (
        forward.ops, backward.ops)
    assert waits.ops == []


def test_the_model_runs_and_orders_the_providers(tmp_path):
    assert attention_model.main(["--n", "256", "2048", "--out", str(tmp_path)]) == 0
    table = csv.DictReader(open(tmp_path / "attention_model_h100.csv"))
    rows = {(int(row["n"]), row["provider"]): row for row in table}
    for n in (256, 2048):
        floor, fused, composite = (float(rows[n, p]["predicted_ms"]) for p in ("floor", "fused", "composite"))
        assert floor < fused < composite
    assert int(rows[2048, "composite"]["launches"]) > 1000 and int(rows[2048, "fused"]["launches"]) == 6
