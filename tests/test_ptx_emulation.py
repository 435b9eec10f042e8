"""The emulated PTX wrappers (csrc/ptx.cuh, csrc/emulation/ptx_emulation.h), lane by lane.

The expected registers are built here, in Python, straight from the PTX ISA's fragment tables
("Matrix Fragments for mma.m16n8k16 with floating point type", "Warp-level matrix load instruction: ldmatrix"),
independently of the C++ emulation: g = lane // 4, t = lane % 4, and a 32-bit register holds two 16-bit elements,
the lower-indexed one in the low half. Each wrapper is compared with a plain matmul or copy; a fragment in the
wrong register or lane must change the result (negative controls).
"""
import pytest
import torch

from emulated_cuda import emulation_unavailable_reason, ptx_probe

pytestmark = pytest.mark.skipif(emulation_unavailable_reason() is not None,
                                reason=f"CUDA emulation: {emulation_unavailable_reason()}")
LANES = torch.arange(32)


def _pack(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Two int16 bit patterns -> one int32 register (low half first), elementwise."""
    return (low.to(torch.int32) & 0xFFFF) | (high.to(torch.int32) << 16)


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int16)


def _a_fragments(a: torch.Tensor) -> torch.Tensor:
    """(16, 16) 16-bit A -> (32, 4) registers: a0 (g, 2t), a1 (g+8, 2t), a2 (g, 2t+8), a3 (g+8, 2t+8)."""
    bits, g, t = _bits(a), LANES // 4, LANES % 4
    corners = [(0, 0), (8, 0), (0, 8), (8, 8)]
    return torch.stack([_pack(bits[g + r, 2 * t + c], bits[g + r, 2 * t + c + 1]) for r, c in corners], dim=1)


def _b_fragments(b: torch.Tensor) -> torch.Tensor:
    """(16, 8) 16-bit B (k, n) -> (32, 2) registers: b0 (2t..2t+1, g), b1 (2t+8..2t+9, g)."""
    bits, g, t = _bits(b), LANES // 4, LANES % 4
    return torch.stack([_pack(bits[2 * t + k, g], bits[2 * t + k + 1, g]) for k in (0, 8)], dim=1)


def _accumulator_fragments(c: torch.Tensor) -> torch.Tensor:
    """(16, 8) fp32 C -> (32, 4): c0, c1 (g, 2t..2t+1), c2, c3 (g+8, 2t..2t+1)."""
    g, t = LANES // 4, LANES % 4
    return torch.stack([c[g, 2 * t], c[g, 2 * t + 1], c[g + 8, 2 * t], c[g + 8, 2 * t + 1]], dim=1)


def _from_accumulator_fragments(d: torch.Tensor) -> torch.Tensor:
    out = torch.empty(16, 8)
    g, t = LANES // 4, LANES % 4
    out[g, 2 * t], out[g, 2 * t + 1], out[g + 8, 2 * t], out[g + 8, 2 * t + 1] = d.unbind(1)
    return out


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_mma_m16n8k16_is_a_matmul(dtype):
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(16, 16, generator=generator).to(dtype)
    b = torch.randn(16, 8, generator=generator).to(dtype)
    c = torch.randn(16, 8, generator=generator)
    d = ptx_probe().mma(_a_fragments(a), _b_fragments(b), _accumulator_fragments(c), dtype == torch.bfloat16)
    expected = a.double() @ b.double() + c.double()
    # Products of 16-bit inputs are exact in fp32; 16 fp32 additions round at most 16 times.
    bound = 16 * torch.finfo(torch.float32).eps * (a.double().abs() @ b.double().abs() + c.abs().double())
    assert ((_from_accumulator_fragments(d).double() - expected).abs() <= bound).all()


@pytest.mark.parametrize("swap", ["a1<->a2", "b0<->b1", "lanes of a quad"])
def test_mma_with_a_misplaced_fragment_is_wrong(swap):
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(16, 16, generator=generator).half()
    b = torch.randn(16, 8, generator=generator).half()
    a_regs, b_regs = _a_fragments(a), _b_fragments(b)
    if swap == "a1<->a2":
        a_regs = a_regs[:, [0, 2, 1, 3]]
    elif swap == "b0<->b1":
        b_regs = b_regs[:, [1, 0]]
    else:
        a_regs = a_regs[LANES ^ 1]
    d = ptx_probe().mma(a_regs, b_regs, torch.zeros(32, 4), False)
    error = (_from_accumulator_fragments(d).double() - a.double() @ b.double()).abs().max()
    assert error > 0.1


def _ldmatrix_expected(matrix: torch.Tensor, offsets: torch.Tensor, count: int, transposed: bool) -> torch.Tensor:
    """Registers per the ISA: lanes 8m..8m+7 address the rows of matrix m; lane l gets row l/4, columns
    2(l%4)..2(l%4)+1 (transposed: rows 2(l%4)..2(l%4)+1 of column l/4)."""
    flat = matrix.reshape(-1)
    expected = torch.zeros(32, 4, dtype=torch.int32)
    for lane in range(32):
        for m in range(count):
            if transposed:
                rows = [offsets[8 * m + 2 * (lane % 4) + e] for e in (0, 1)]
                low, high = (flat[row + lane // 4] for row in rows)
            else:
                row = offsets[8 * m + lane // 4]
                low, high = flat[row + 2 * (lane % 4)], flat[row + 2 * (lane % 4) + 1]
            expected[lane, m] = _pack(low, high)
    return expected


@pytest.mark.parametrize("transposed", [False, True], ids=["plain", "trans"])
@pytest.mark.parametrize("count", [1, 2, 4])
def test_ldmatrix_lane_by_lane(count, transposed):
    generator = torch.Generator().manual_seed(count)
    columns = 64
    matrix = torch.randint(-2**15, 2**15, (40, columns), dtype=torch.int16, generator=generator)
    # Any 16-byte aligned row start per lane: a random row and an 8-element column block.
    rows = torch.randint(0, 40, (32,), generator=generator)
    blocks = torch.randint(0, columns // 8, (32,), generator=generator)
    offsets = rows * columns + blocks * 8
    registers = ptx_probe().ldmatrix(matrix, offsets, count, transposed, False)
    assert torch.equal(registers, _ldmatrix_expected(matrix, offsets, count, transposed))


def test_ldmatrix_then_mma_is_a_matmul():
    # The combination the kernels use: A by ldmatrix.x4 from a row-major tile, B^T rows by ldmatrix.x2 (K-major
    # B, as K in Q K^T), and B by ldmatrix.x2.trans from a row-major (k, n) tile (as V in P V).
    generator = torch.Generator().manual_seed(3)
    a = torch.randn(16, 16, generator=generator).half()
    b = torch.randn(16, 8, generator=generator).half()
    probe = ptx_probe()
    lane = LANES
    a_offsets = (lane % 16) * 16 + (lane // 16) * 8  # matrices (rows 0-7 | 8-15) x (columns 0-7 | 8-15)
    a_regs = probe.ldmatrix(_bits(a), a_offsets, 4, False, False)
    bt_offsets = (lane % 8) * 16 + ((lane // 8) % 2) * 8  # B^T (8 x 16): columns 0-7, then 8-15
    b_from_rows = probe.ldmatrix(_bits(b.t().contiguous()), bt_offsets, 2, False, False)[:, :2]
    b_offsets = (lane % 16) * 8  # B (16 x 8): rows 0-7, then 8-15, transposed on load
    b_from_trans = probe.ldmatrix(_bits(b), b_offsets, 2, True, False)[:, :2]
    assert torch.equal(b_from_rows, b_from_trans)
    assert torch.equal(a_regs, _a_fragments(a))
    d = probe.mma(a_regs, b_from_trans, torch.zeros(32, 4), False)
    torch.testing.assert_close(_from_accumulator_fragments(d), (a.float() @ b.float()), rtol=1e-5, atol=1e-5)


def test_ldmatrix_refuses_global_addresses():
    matrix = torch.zeros(8, 8, dtype=torch.int16)
    with pytest.raises(RuntimeError, match="ldmatrix row address outside shared memory"):
        ptx_probe().ldmatrix(matrix, (LANES % 8) * 8, 1, False, True)


def test_cp_async_lands_at_its_wait_and_zero_fills():
    source = torch.arange(1, 2 * 32 * 4 + 1, dtype=torch.float32).reshape(2, 32, 4)
    src_bytes = torch.full((32,), 16)
    src_bytes[5], src_bytes[6], src_bytes[7] = 0, 4, 12
    after_issue, after_wait1, after_wait0 = ptx_probe().cp_async(source, src_bytes, False)
    assert torch.isnan(after_issue).all(), "copies must not land before their wait"
    expected = source.clone()
    for lane, floats in ((5, 0), (6, 1), (7, 3)):
        expected[:, lane, floats:] = 0
    assert torch.equal(after_wait1[0], expected[0])
    assert torch.isnan(after_wait1[1]).all(), "wait_group 1 leaves the newest group in flight"
    assert torch.equal(after_wait0, expected)


def test_exiting_with_copies_in_flight_is_refused():
    with pytest.raises(RuntimeError, match="never waited"):
        ptx_probe().cp_async(torch.zeros(2, 32, 4), torch.full((32,), 16), True)


@pytest.mark.parametrize("mode, race", [(0, None), (1, "race: .* with no __syncthreads"),
                                        (2, "race: .* with no __syncthreads")],
                         ids=["barriers", "no-barrier-after-wait", "copy-over-a-read-tile"])
def test_race_check_of_the_cp_async_ldmatrix_pipeline(mode, race):
    # Warp 1 copies, warp 0 reads. The check does not depend on the fibers' order: accesses by two warps between
    # the same two barriers are unordered, whichever runs first here.
    source = torch.randint(-2**15, 2**15, (32, 8), dtype=torch.int16, generator=torch.Generator().manual_seed(5))
    if race is None:
        registers = ptx_probe().pipeline(source, mode)
        assert torch.equal(registers, _ldmatrix_expected(source, LANES * 8, 4, False))
    else:
        with pytest.raises(RuntimeError, match=race):
            ptx_probe().pipeline(source, mode)
