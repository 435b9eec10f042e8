"""``estimate_step_memory``: the meta-device run allocates what a real step allocates, parameters are counted exactly,
the estimate equals the allocator's measured peak of real steps, checkpointing and LoRA move the numbers the right
way, bad arguments are refused. (The comparison on the tiny model and SmolLM2, allocator and resident set, is
``benchmarks/validate_memory_model.py``.)"""
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the memory model runs HF models")

from quietstar_fast import QuietStar, estimate_step_memory  # noqa: E402
from quietstar_fast.memory import _LiveBytes  # noqa: E402
from quietstar_fast.quietstar.module import run_step  # noqa: E402

SIZES = dict(n_ahead=5, n_ahead_talk=2, n_passes=2)


def _config():
    return transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                    tie_word_embeddings=False, pad_token_id=0, eos_token_id=0)


def _estimate(**overrides):
    options = dict(SIZES, dtype=torch.float32, device="cpu")
    options.update(overrides)
    return estimate_step_memory(_config(), 2, 48, **options)


@pytest.mark.parametrize("checkpointing", [None, "layer"])
def test_the_meta_run_allocates_what_a_real_step_allocates(checkpointing):
    """The same step on real CPU tensors, under the same byte counter: the peaks agree within 1% (small scalars made
    on the host differ)."""
    torch.manual_seed(0)
    config = _config()
    config._attn_implementation = "sdpa"
    quiet = QuietStar(transformers.LlamaForCausalLM(config), start_token_id=298, end_token_id=299, init_token_id=0,
                      kernel_impl="torch", activation_checkpointing=checkpointing, **SIZES)
    ids = torch.randint(1, 298, (2, 48))
    with _LiveBytes() as counter:
        run_step(quiet, ids, torch.ones_like(ids)).loss.backward()
    estimate = _estimate(checkpointing=checkpointing)
    assert estimate.step_peak == pytest.approx(counter.peak, rel=1e-2)
    parameters = sum(p.numel() * p.element_size() for p in quiet.parameters())
    assert estimate.weights == parameters
    assert estimate.gradients == parameters and estimate.optimizer_state == 2 * parameters


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("checkpointing", [None, "layer"])
def test_the_estimate_equals_the_allocators_measured_peak(checkpointing, lora):
    """A real CPU step measured by PyTorch's allocator (the profiler's allocation events: what max_memory_allocated
    counts on a GPU, temporaries inside ops included): the estimate is within 5%, with a vocabulary large enough that
    the LM-head chunks and logsumexp's internal temporary dominate. Measured residual < 1% (host-side scalars); the 5%
    leaves room for CPU BLAS builds that allocate packing buffers through the allocator."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import bench_utils

    config = transformers.LlamaConfig(vocab_size=4096, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                      tie_word_embeddings=False, pad_token_id=0, eos_token_id=0,
                                      attn_implementation="sdpa")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    if lora:
        pytest.importorskip("peft")
        from quietstar_fast.lora import add_lora

        model = add_lora(model, 4)
    quiet = QuietStar(model, start_token_id=4094, end_token_id=4095, init_token_id=5, kernel_impl="torch",
                      activation_checkpointing=checkpointing, **SIZES).train()
    ids = torch.randint(1, 4094, (2, 48))

    def step():
        quiet(ids, generator=torch.Generator().manual_seed(1)).loss.backward()
        quiet.zero_grad(set_to_none=True)

    step()  # warm-up: lazy initialisation must not count
    measured = bench_utils.cpu_allocator_peak_mb(step) * 2**20
    estimate = estimate_step_memory(config, 2, 48, dtype=torch.float32, device="cpu", checkpointing=checkpointing,
                                    lora_rank=4 if lora else None, **SIZES)
    assert estimate.step_peak == pytest.approx(measured, rel=0.05)


def test_checkpointing_and_lora_lower_what_they_should():
    pytest.importorskip("peft")
    full, checkpointed = _estimate(), _estimate(checkpointing="layer")
    assert checkpointed.step_peak < full.step_peak / 2
    assert checkpointed.weights == full.weights
    lora = _estimate(lora_rank=4)
    # Trainable with LoRA: r * (in + out) per adapted projection and layer, the two meta embeddings (2 x 2D) and the
    # mixing head (2D -> D -> D -> 1), fp32.
    projections = [(64, 64), (64, 32), (64, 32), (64, 64), (64, 160), (64, 160), (160, 64)]
    adapters = 2 * sum(4 * (fan_in + fan_out) for fan_in, fan_out in projections)
    own = 2 * 2 * 64 + (128 * 64 + 64) + (64 * 64 + 64) + 64
    assert lora.gradients == 4 * (adapters + own) and lora.optimizer_state == 2 * lora.gradients
    assert lora.weights > full.weights  # the adapters join the frozen weights
    # Every step's n positions of every row stay in the cache: K and V, per layer and kv head.
    assert full.kv_cache == 2 * 2 * 2 * 16 * (2 * 2 * 48 * 6) * 4
    assert full.total == full.weights + full.optimizer_state + full.step_peak


def test_a_config_without_pad_or_eos_ids_is_estimated():
    config = _config()
    config.pad_token_id = config.eos_token_id = None
    assert estimate_step_memory(config, 1, 32, **SIZES, dtype=torch.float32, device="cpu").step_peak > 0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="optimizer"):
        _estimate(optimizer="adam8bit")
    with pytest.raises(ValueError, match="device"):
        _estimate(device="tpu")
    with pytest.raises(ValueError, match="checkpointing"):
        _estimate(checkpointing="step")


def test_the_big_step_benchmark_runs_and_records_the_prediction(tmp_path):
    """The GPU check's 7B stage (benchmarks/bench_big_step.py) on its tiny shape on CPU: it trains (LoRA,
    checkpointing, AdamW) and writes the measured and predicted rows."""
    pytest.importorskip("peft")
    import csv
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import bench_big_step

    assert bench_big_step.main(["--shape", "tiny", "--device", "cpu", "--batch", "1", "--seq-len", "32",
                                "--n-ahead", "4", "--n-ahead-talk", "2", "--out", str(tmp_path)]) == 0
    rows = {row["metric_name"]: row for row in csv.DictReader(open(tmp_path / "big_step_cpu.csv"))}
    assert set(rows) == {"time", "tokens_per_s", "peak_memory_allocated", "peak_memory_predicted"}
    assert float(rows["peak_memory_predicted"]["y_value_50"]) > 0
