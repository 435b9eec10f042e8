"""Compute ``tests/data/official_eval_fixture.pt`` with the official Quiet-STaR code itself (run once; committed).

    python scripts/make_official_eval_fixture.py --official path/to/quiet-star   # a checkout of ezelikman/quiet-star

It needs the official code's stack: transformers 4.39.3 (``pip install torch==2.13.0 transformers==4.39.3`` in a
separate venv). What it runs, all official:
- ``eval_helpers.preprocess_eval_function_gsm`` / ``preprocess_eval_function_csqa`` format and tokenize the bundled
  samples (``examples/data/*_sample.jsonl``);
- the official ``MistralForCausalLM`` (its ``modeling_mistral.py``) in eval mode, as the official Trainer evaluates
  (n_ahead_talk and n_passes switched to 1 by its forward), on the official test vector's tiny Mistral and weights
  (the ``nonzero`` case: a non-zero mixing head), thought noise from a seed injected into its Gumbel sampling;
- ``eval_helpers.compute_metrics`` on those logits (with thoughts) and on the stock model's logits over the same
  weights (without thoughts: the base model's column of the paper's table).
The official eval code loads Mistral-7B's tokenizer and hard-codes its ids of the digits, " A".." E" and newline; the
tiny model's vocabulary is 302 tokens, so the script hands it the Mistral-like tokenizer of
``tests/mistral_like_tokenizer.py`` and replaces those two literal lists with that tokenizer's ids of the same pieces
(the only change to the official functions; checked below to have taken effect).
"""
from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import sys
import types
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from mistral_like_tokenizer import build_tokenizer  # noqa: E402
from official_eval_case import MAX_LENGTH, N_AHEAD, NOISE_SEED, TINY_MISTRAL, thought_noise  # noqa: E402

WINDOW = 12  # logits kept per row: the last WINDOW real positions (the marker and the answer)
OFFICIAL_NUMBER_IDS = "[28740, 28750, 28770, 28781, 28782, 28784, 28787, 28783, 28774, 28734, 13]"
OFFICIAL_LETTER_IDS = "[330, 365, 334, 384, 413, 13]"
# the modules the official modeling file imports only for logging and plots
PLOTTING_MODULES = ("pandas", "seaborn", "matplotlib", "matplotlib.pyplot", "matplotlib.colors", "wandb",
                    "termcolor", "reportlab", "reportlab.pdfgen", "reportlab.pdfgen.canvas", "reportlab.lib",
                    "reportlab.lib.pagesizes", "reportlab.lib.colors")


def read_jsonl(path: Path) -> dict[str, list]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {key: [row[key] for row in rows] for key in rows[0]}


def load_official_helpers(official: Path, tokenizer):
    source = (official / "eval_helpers.py").read_text()
    digits = [tokenizer.convert_tokens_to_ids(d) for d in "1234567890"] + [tokenizer.convert_tokens_to_ids("\n")]
    letters = [tokenizer.convert_tokens_to_ids(f"▁{c}") for c in "ABCDE"] + [tokenizer.convert_tokens_to_ids("\n")]
    for literal, ids in ((OFFICIAL_NUMBER_IDS, digits), (OFFICIAL_LETTER_IDS, letters)):
        if source.count(literal) != 1:
            raise RuntimeError(f"eval_helpers.py no longer holds {literal}: is this commit 892446b?")
        source = source.replace(literal, str(ids))
    helpers = types.ModuleType("eval_helpers")
    with mock.patch("transformers.AutoTokenizer.from_pretrained", return_value=tokenizer):
        exec(compile(source, str(official / "eval_helpers.py"), "exec"), helpers.__dict__)
    return helpers


def load_official_model(official: Path, state_dict: dict, tokenizer):
    for name in PLOTTING_MODULES:
        stub = types.ModuleType(name)
        stub.__spec__ = importlib.machinery.ModuleSpec(name, None)
        stub.__getattr__ = lambda attribute: mock.MagicMock(name=attribute)
        sys.modules.setdefault(name, stub)
    from transformers import MistralConfig

    spec = importlib.util.spec_from_file_location("transformers.models.mistral.modeling_quietstar_official",
                                                  official / "modeling_mistral.py")
    modeling = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = modeling
    spec.loader.exec_module(modeling)
    config = MistralConfig(
        **TINY_MISTRAL, pad_token_id=2, bos_token_id=1, eos_token_id=2,
        # quiet-star-train.py's model_init
        max_thoughts=N_AHEAD + 4 + 1, merged_talk_heads=True, merged_lm_and_talk_heads=False,
        merged_lm_and_think_heads=True, use_concat_talk_head=True, use_shallow_think=True, use_shallow_talk=False,
        use_complex_think_head=False, use_complex_talk_head=True, use_weighted_talk_head=True)
    model = modeling.MistralForCausalLM(config)
    model.load_state_dict(state_dict, strict=True)
    for name, value in dict(tokenizer=tokenizer, gumbel_detach=True, include_policy_loss=True, n_ahead=N_AHEAD,
                            n_ahead_talk=4, n_passes=2, n_tokens_print=1, gradient_accumulation_steps=1,
                            residual_think_head=False, optimize_lm_head_only_at_start=False, gumbel_temperature=1,
                            wandb_enabled=False, original_mode=False, config_params={}, kill_after=None,
                            start_token_id=300, end_token_id=301, rm_initialized=True).items():
        setattr(model, name, value)
    return model.eval()


def official_eval_logits(model, batch, noise):
    """The official eval forward with its Gumbel draws replaced by ``noise`` (K, B, n, V), in order."""
    draws = iter(noise)

    def gumbel_softmax(logits, tau=1.0, hard=False, dim=-1):
        assert hard and dim == -1
        return torch.nn.functional.one_hot((logits + next(draws).reshape(logits.shape)).argmax(-1),
                                           logits.shape[-1]).to(logits.dtype)

    with torch.no_grad(), mock.patch("torch.nn.functional.gumbel_softmax", gumbel_softmax):
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).logits
    assert next(draws, None) is None, "the official forward drew fewer thought tokens than expected"
    return logits


def base_logits(state_dict, batch):
    """The stock Mistral over the same base weights: the without-thoughts logits."""
    from transformers import MistralConfig, MistralForCausalLM

    model = MistralForCausalLM(MistralConfig(**TINY_MISTRAL)).eval()
    model.load_state_dict({k: v for k, v in state_dict.items()
                           if not k.startswith(("start_embedding", "end_embedding", "talk_head"))}, strict=True)
    with torch.no_grad():
        return model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def per_question(helpers, logits, labels) -> list[float]:
    """compute_metrics on one question at a time: its answer probability (the official mean is their average)."""
    return [float(helpers.compute_metrics((logits[i:i + 1].numpy(), labels[i:i + 1].numpy(), None))["accuracy"])
            for i in range(labels.shape[0])]


def windows(logits, attention_mask):
    last = attention_mask.sum(dim=1) - 1
    start = (last + 1 - WINDOW).clamp_min(0)
    return start, torch.stack([logits[row, s:s + WINDOW] for row, s in enumerate(start.tolist())])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="checkout of ezelikman/quiet-star (892446b)")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "official_eval_fixture.pt")
    args = parser.parse_args()
    import transformers

    tokenizer = build_tokenizer()
    helpers = load_official_helpers(args.official, tokenizer)
    vector = torch.load(ROOT / "tests" / "data" / "official_quietstar_tiny.pt", weights_only=True)
    state_dict = vector["cases"]["nonzero"]["state_dict"]
    model = load_official_model(args.official, state_dict, tokenizer)
    data = ROOT / "examples" / "data"
    fixture = {"meta": {"transformers": transformers.__version__, "torch": str(torch.__version__), "n_ahead": N_AHEAD,
                        "max_length": MAX_LENGTH, "noise_seed": NOISE_SEED, "window": WINDOW,
                        "weights": "official_quietstar_tiny.pt: nonzero/state_dict"}}
    for name, path, preprocess in (
            ("gsm8k", data / "gsm8k_sample.jsonl", helpers.preprocess_eval_function_gsm),
            ("commonsense_qa", data / "commonsense_qa_sample.jsonl", helpers.preprocess_eval_function_csqa)):
        batch = preprocess(read_jsonl(path), max_length=MAX_LENGTH)
        rows, seq_len = batch["input_ids"].shape
        noise = thought_noise(rows, seq_len)
        with_thoughts = official_eval_logits(model, batch, noise)
        without = base_logits(state_dict, batch)
        start, thought_window = windows(with_thoughts, batch["attention_mask"])
        _, base_window = windows(without, batch["attention_mask"])
        fixture[name] = {
            "input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "noise_sum": noise.double().sum(), "window_start": start,
            "thought_logits_window": thought_window, "base_logits_window": base_window,
            "accuracy_with_thoughts": float(helpers.compute_metrics(
                (with_thoughts.numpy(), batch["labels"].numpy(), None))["accuracy"]),
            "accuracy_without_thoughts": float(helpers.compute_metrics(
                (without.numpy(), batch["labels"].numpy(), None))["accuracy"]),
            "per_question_with_thoughts": per_question(helpers, with_thoughts, batch["labels"]),
            "per_question_without_thoughts": per_question(helpers, without, batch["labels"]),
        }
        print(name, {k: v for k, v in fixture[name].items() if k.startswith(("accuracy", "per_question"))})
    torch.save(fixture, args.out)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
