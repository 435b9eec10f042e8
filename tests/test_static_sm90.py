"""Static sm_90 evidence (scripts/static_sm90.py): the CUDA kernels compiled here with nvcc meet the rules (no
spills, the tensor-core instructions, two blocks per H100 SM), and the committed benchmarks/results/static_sm90.csv
covers exactly the kernels that exist now, none breaking a rule. The Triton rules themselves are enforced by
tests/test_aot_compile.py, which compiles every configuration."""
import csv
import sys
from pathlib import Path

import pytest

from quietstar_fast.cuda_toolkit import find_cuda_toolkit
from quietstar_fast.kernels.aot import _TRITON_DTYPE, launchable_configs, variant_label

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import static_sm90  # noqa: E402

# Tensor cores: 2 dtypes x d = 64, 96, 128 x (fwd, dq, prefix dK/dV, stream dK/dV); CUDA cores: 3 dtypes x d = 64, 128
# x the same four; the preprocess for 3 dtypes; the LM head's two kernels for 3 dtypes.
CUDA_INSTANTIATIONS = 2 * 3 * 4 + 3 * 2 * 4 + 3 + 3 * 2


@pytest.mark.skipif(find_cuda_toolkit() is None, reason="needs nvcc (CI has it: scripts/build_cuda.sh)")
def test_cuda_kernels_meet_the_static_rules():
    rows = static_sm90.cuda_rows()
    assert len(rows) == CUDA_INSTANTIATIONS
    assert not [row for row in rows if row["violations"]]
    assert not [row for row in rows if row["spill_bytes"]]
    tensor_core = [row for row in rows if row["dtype"] != "float32" and row["kernel"] in static_sm90.TENSOR_CORE_GEMMS]
    assert len(tensor_core) == 2 * 3 * 3 + 2 * 2
    assert all(row["mma"] == "mma" and row["blocks_per_sm_h100"] >= 2 for row in tensor_core)


def test_static_rules_catch_a_kernel_without_its_instructions():
    # The rules themselves: a 16-bit GEMM kernel whose SASS lost ldmatrix or cp.async, or that fits one block per
    # SM, breaks them.
    sass = dict.fromkeys(static_sm90._SASS_COUNTS, 0) | {"HMMA": 8, "LDSM": 0, "LDGSTS": 4}
    readable = "void quietstar::thought_attention_fwd_mma_kernel<__half, 128>(quietstar::ThoughtAttentionArgs)"
    footprint = {("thought_attention_fwd_mma", "float16", 128): 150_000}
    row = static_sm90._cuda_row(readable, 0, 0, 200, 0, 128, sass, (0, 0, 200, 0), footprint)
    assert "no LDSM" in row["violations"] and "1 block per SM" in row["violations"]


def test_committed_evidence_covers_every_kernel_and_breaks_no_rule():
    rows = list(csv.DictReader(open(ROOT / "benchmarks" / "results" / "static_sm90.csv")))
    assert not [row for row in rows if row["violations"]]
    committed = sorted((r["kernel"], r["dtype"], r["config"]) for r in rows if r["backend"] == "triton")
    current = sorted((name, _TRITON_DTYPE[dtype], " ".join(variant_label(cfg, consts)))
                     for name, _, dtype, consts, cfg in launchable_configs())
    assert committed == current, "kernels/configs.py changed: regenerate with python scripts/static_sm90.py"
    assert sum(r["backend"] == "cuda" for r in rows) == CUDA_INSTANTIATIONS
