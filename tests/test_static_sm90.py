"""Static sm_90 evidence (scripts/static_sm90.py): the CUDA kernels compiled here with nvcc have no spills beyond
the listed known cases, and the committed benchmarks/results/static_sm90.csv covers exactly the kernels that exist
now, none breaking a rule. The Triton rules themselves are enforced by tests/test_aot_compile.py, which compiles
every configuration."""
import csv
import sys
from pathlib import Path

import pytest

from quietstar_fast.cuda_toolkit import find_cuda_toolkit
from quietstar_fast.kernels.aot import _TRITON_DTYPE, launchable_configs, variant_label

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import static_sm90  # noqa: E402

# 3 dtypes x (fwd, dq, prefix dK/dV, stream dK/dV at d = 64 and 128, and the preprocess) + 3 dtypes x 2 LM-head
CUDA_INSTANTIATIONS = 3 * (4 * 2 + 1) + 3 * 2


@pytest.mark.skipif(find_cuda_toolkit() is None, reason="needs nvcc (CI has it: scripts/build_cuda.sh)")
def test_cuda_kernels_spill_only_where_known():
    rows = static_sm90.cuda_rows()
    assert len(rows) == CUDA_INSTANTIATIONS
    assert not [row for row in rows if row["violations"]]
    spilling = {(row["kernel"], row["dtype"], row["head_dim"]) for row in rows if row["spill_bytes"]}
    assert spilling == static_sm90.KNOWN_CUDA_SPILLS, "a known spill is gone: remove it from KNOWN_CUDA_SPILLS"
    assert all(row["mma"] == "mma" for row in rows if row["dtype"] != "float32" and row["kernel"] in (
        "thought_attention_fwd", "thought_attention_bwd_dq", "thought_attention_bwd_prefix_dkdv",
        "linear_softmax_fwd", "linear_softmax_grad")), "a 16-bit GEMM kernel lost its tensor-core instructions"


def test_committed_evidence_covers_every_kernel_and_breaks_no_rule():
    rows = list(csv.DictReader(open(ROOT / "benchmarks" / "results" / "static_sm90.csv")))
    assert not [row for row in rows if row["violations"]]
    committed = sorted((r["kernel"], r["dtype"], r["config"]) for r in rows if r["backend"] == "triton")
    current = sorted((name, _TRITON_DTYPE[dtype], " ".join(variant_label(cfg, consts)))
                     for name, _, dtype, consts, cfg in launchable_configs())
    assert committed == current, "kernels/configs.py changed: regenerate with python scripts/static_sm90.py"
    assert sum(r["backend"] == "cuda" for r in rows) == CUDA_INSTANTIATIONS
