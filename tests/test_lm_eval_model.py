"""The lm-evaluation-harness model: its scores are the official eval forward's, and ``quietstar-lm-eval`` runs local
tasks of all three request kinds end to end from a saved model directory."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="needs transformers")
pytest.importorskip("lm_eval", reason="needs lm-eval (requirements-cpu.txt pins it)")

from lm_eval import utils  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from mistral_like_tokenizer import build_tokenizer  # noqa: E402
from test_official_eval import official_model  # noqa: E402

from quietstar_fast.eval import logits_for, score_tokens  # noqa: E402
from quietstar_fast.eval.positions import score_positions  # noqa: E402
from quietstar_fast.eval.lm_eval_model import QuietStarLM  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHOICES = [{"question": "Where does a fish live?", "choices": ["water", "sky", "sand"], "gold": 0},
           {"question": "What cuts paper?", "choices": ["spoon", "scissors", "rope"], "gold": 1},
           {"question": "What is 2 + 3?", "choices": ["4", "5", "6"], "gold": 1}]


def request(kind: str, *args) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


@pytest.fixture(scope="module")
def lm():
    return QuietStarLM(quiet=official_model(), tokenizer=build_tokenizer(), batch_size=2, seed=3)


@pytest.mark.parametrize("think_at", ["positions", "all"])
def test_loglikelihood_is_the_scored_continuation(think_at):
    """A request's (log p(continuation | context), is_greedy) is read off the mixed predictions at the
    continuation's positions: ``score_positions`` (thinking there only) or ``score_tokens`` (everywhere), thoughts
    from the same seed."""
    quiet, tokenizer = official_model(), build_tokenizer()
    pairs = [("Q: Where does a fish live?\nA:", " water"), ("Q: 2 + 3 =", " 5"), ("Hi", " there, friend")]
    for context, continuation in pairs:
        lm = QuietStarLM(quiet=quiet, tokenizer=tokenizer, batch_size=1, seed=5, think_at=think_at)
        ((logprob, greedy),) = lm.loglikelihood([request("loglikelihood", context, continuation)])
        context_ids, continuation_ids = lm._encode_pair(context, continuation)
        ids = torch.tensor([context_ids + continuation_ids])
        count, length = len(continuation_ids), ids.shape[1]
        generator = torch.Generator().manual_seed(5)
        if think_at == "positions":
            columns = torch.arange(length - 1 - count, length - 1)
            hidden = score_positions(quiet, ids, None, torch.zeros_like(columns), columns,
                                     generator=generator).thought_hidden
        else:
            scores = score_tokens(quiet, ids, generator=generator)
            hidden = scores.thought_hidden[0, -count - 1:-1]
            # the talk NLL of the training call is the same number (a different code path)
            torch.testing.assert_close(scores.thought_logprobs[0, -count:].sum(), torch.tensor(logprob),
                                       rtol=1e-5, atol=1e-5)
        logprobs = logits_for(hidden, quiet.model.lm_head.weight).log_softmax(-1)
        targets = torch.tensor(continuation_ids)
        assert logprob == float(logprobs.gather(1, targets[:, None]).sum())
        assert greedy == bool((logprobs.argmax(-1) == targets).all())


def test_with_a_zero_mixing_head_it_is_the_base_model(lm):
    """w = 0: the thought-mixed log-likelihood equals the plain HF model's, request by request (rolling too)."""
    quiet = official_model()
    torch.nn.init.zeros_(quiet.talk_head[0][4].weight)
    zero = QuietStarLM(quiet=quiet, tokenizer=lm.tokenizer, batch_size=2)  # "auto": thinks at the positions
    pairs = [("Q: Where does a fish live?\nA:", " water"), ("Hi", " there")]
    for (context, continuation), (logprob, greedy) in zip(
            pairs, zero.loglikelihood([request("loglikelihood", *pair) for pair in pairs])):
        context_ids, continuation_ids = zero._encode_pair(context, continuation)
        ids = torch.tensor([context_ids + continuation_ids])
        with torch.no_grad():
            logits = quiet.model(ids).logits[0, -len(continuation_ids) - 1:-1].double().log_softmax(-1)
        expected = logits.gather(1, torch.tensor(continuation_ids)[:, None]).sum()
        assert abs(logprob - float(expected)) <= 1e-4 * abs(float(expected))
        assert greedy == bool((logits.argmax(-1) == torch.tensor(continuation_ids)).all())
    # rolling: lm-eval's disjoint windows of at most 16 predictions, each token predicted once
    text = "The quick brown fox jumps over the lazy dog again."
    windowed = QuietStarLM(quiet=quiet, tokenizer=lm.tokenizer, batch_size=2, max_length=16)
    (rolling,) = windowed.loglikelihood_rolling([request("loglikelihood_rolling", text)])
    windows = [utils.make_disjoint_window(pair) for pair in utils.get_rolling_token_windows(
        windowed.tok_encode(text), windowed.prefix_token_id, max_seq_len=16, context_len=1)]
    assert len(windows) > 2
    total = 0.0
    with torch.no_grad():
        for context, continuation in windows:
            ids = torch.tensor([context + continuation])
            logits = quiet.model(ids).logits[0, -len(continuation) - 1:-1].double().log_softmax(-1)
            total += float(logits.gather(1, torch.tensor(continuation)[:, None]).sum())
    assert abs(rolling - total) <= 1e-4 * abs(total)


def test_generate_until_stops_at_the_until_strings(lm):
    (text,) = lm.generate_until([request("generate_until", "Q: 1 + 1?\nA:",
                                         {"until": ["\n", "Q"], "max_gen_toks": 6})])
    assert isinstance(text, str) and "\n" not in text and "Q" not in text and len(text) <= 6 * 8


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="either pretrained"):
        QuietStarLM()
    with pytest.raises(ValueError, match="tokenizer= is required"):
        QuietStarLM(quiet=official_model())
    with pytest.raises(ValueError, match="batch_size"):
        QuietStarLM(quiet=official_model(), tokenizer=build_tokenizer(), batch_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        QuietStarLM(quiet=official_model(), tokenizer=build_tokenizer(), batch_size="auto")
    with pytest.raises(ValueError, match="think_at"):
        QuietStarLM(quiet=official_model(), tokenizer=build_tokenizer(), think_at="sometimes")


TASKS_YAML = """\
task: quietstar_tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
metric_list:
  - metric: acc
---
task: quietstar_tiny_generate
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_target: "{{{{choices[gold]}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 4
metric_list:
  - metric: exact_match
---
task: quietstar_tiny_perplexity
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{question}}}}"
metric_list:
  - metric: word_perplexity
"""


def test_the_cli_runs_local_tasks_from_a_saved_model(tmp_path):
    """``python -m quietstar_fast.eval.lm_eval_model`` (the ``quietstar-lm-eval`` command) with
    ``--model quietstar --model_args pretrained=DIR`` on three local tasks (one per request kind)."""
    model_dir = tmp_path / "model"
    official_model().save_pretrained(model_dir)
    build_tokenizer().save_pretrained(model_dir)
    data = tmp_path / "choices.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in CHOICES))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for index, text in enumerate(TASKS_YAML.format(data=data).split("---\n")):
        (tasks / f"task{index}.yaml").write_text(text)
    env = dict(os.environ, HF_DATASETS_CACHE=str(tmp_path / "datasets"), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "quietstar_fast.eval.lm_eval_model", "--model", "quietstar",
               "--model_args", f"pretrained={model_dir},kernel_impl=torch", "--batch_size", "2",
               "--tasks", "quietstar_tiny_choice,quietstar_tiny_generate,quietstar_tiny_perplexity",
               "--include_path", str(tasks), "--output_path", str(tmp_path / "out")]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (results_file,) = list((tmp_path / "out").rglob("results*.json"))
    results = json.loads(results_file.read_text())["results"]
    assert 0.0 <= results["quietstar_tiny_choice"]["acc,none"] <= 1.0
    assert 0.0 <= results["quietstar_tiny_generate"]["exact_match,none"] <= 1.0
    assert results["quietstar_tiny_perplexity"]["word_perplexity,none"] > 1.0
    assert json.loads(results_file.read_text())["config"]["model"] == "quietstar"
