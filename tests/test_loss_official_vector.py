"""The LM-head ops reproduce the official implementation's own numbers (tests/data/official_quietstar_tiny.pt):
base NLL, talk NLLs with the mixing weight, sampled thought tokens (same Gumbel noise) and REINFORCE log-probs."""
from pathlib import Path

import pytest
import torch

from backends import KERNEL_IMPLS
from quietstar_fast import mixed_cross_entropy, sample_thought_tokens

DATA = torch.load(Path(__file__).parent / "data" / "official_quietstar_tiny.pt", weights_only=True)
SIZES = DATA["meta"]["sizes"]
N_AHEAD, N_TALK, SEQ, VOCAB = SIZES["N"], SIZES["T"], SIZES["n"], SIZES["V"]
PAD = DATA["meta"]["token_ids"]["pad"]
META_TOKENS = [DATA["meta"]["token_ids"]["startthought"], DATA["meta"]["token_ids"]["endthought"]]
IMPLS = ["reference", "torch", *KERNEL_IMPLS]
# fp32; README of the test vector: a faithful reimplementation reproduces NLLs to about 1e-6.
TOL = dict(rtol=1e-5, atol=1e-5)


def _case(name, device):
    case = {key: DATA["cases"][name][key] for key in ("hidden_states", "base_nll", "talk_weights", "talk_nll",
                                                      "gumbel_noise", "thought_tokens", "action_logprobs")}
    case = {key: [x.to(device) for x in value] if isinstance(value, list) else value.to(device)
            for key, value in case.items()}
    labels = DATA["cases"][name]["labels_rows"].clone().to(device)
    labels[labels == PAD] = -100  # the official code ignores pad (= eos) labels
    return case, labels, DATA["cases"][name]["state_dict"]["lm_head.weight"].to(device)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", ["official_init", "nonzero"])
def test_base_and_talk_nll(name, impl, device):
    case, labels, weight = _case(name, device)
    hidden = case["hidden_states"]
    rows, dim = hidden.shape[1], hidden.shape[-1]
    base = mixed_cross_entropy(hidden[0][:, :-1].reshape(-1, dim), weight, labels[:, 1:].reshape(-1), impl=impl)
    torch.testing.assert_close(base.view(rows, SEQ - 1), case["base_nll"], **TOL)
    for k in range(1, N_TALK + 1):
        step = N_AHEAD - 2 + k
        valid = SEQ - k
        talk = mixed_cross_entropy(
            hidden[0][:, k - 1:k - 1 + valid].reshape(-1, dim),  # h_0[i + k - 1]
            weight,
            labels[:, k:].reshape(-1),  # x_{i + k}
            h_thought=hidden[step][:, :valid].reshape(-1, dim),
            mix_weight=case["talk_weights"][step - 1][:, :valid].reshape(-1),
            impl=impl,
        )
        torch.testing.assert_close(talk.view(rows, valid), case["talk_nll"][k - 1], **TOL)


@pytest.mark.parametrize("impl", IMPLS)
def test_thought_tokens_and_policy_logprobs(impl, device):
    case, _, weight = _case("nonzero", device)
    hidden = case["hidden_states"]
    rows, dim = hidden.shape[1], hidden.shape[-1]
    for s in range(1, N_AHEAD - 2):
        tokens, logprob = sample_thought_tokens(
            hidden[s].reshape(-1, dim), weight, gumbel_noise=case["gumbel_noise"][s - 1].reshape(-1, VOCAB),
            banned_token_ids=META_TOKENS, policy_temperature=3.0, impl=impl,
        )
        assert torch.equal(tokens.view(rows, SEQ), case["thought_tokens"][s - 1]), f"thought step {s}"
        torch.testing.assert_close(logprob.view(rows, SEQ)[:, :-1], case["action_logprobs"][s - 1], **TOL)
