"""The official evaluation, ported: our scores and metric equal what the official code computes on the same model,
weights, batch and thought noise (``tests/data/official_eval_fixture.pt``, made by
``scripts/make_official_eval_fixture.py`` with the official ``modeling_mistral.py`` and ``eval_helpers.py``)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="needs transformers")

from mistral_like_tokenizer import build_tokenizer  # noqa: E402
from official_eval_case import N_AHEAD, TINY_MISTRAL, thought_noise  # noqa: E402
from tolerance import max_abs_error, spread_bound  # noqa: E402

from quietstar_fast import QuietStar  # noqa: E402
from quietstar_fast.eval import (  # noqa: E402
    AnswerTokens, answer_probabilities, evaluate_task, load_examples, logits_for, score_tokens, task_texts,
)
from quietstar_fast.eval.official import encode_eval_texts, scored_tokens  # noqa: E402
from quietstar_fast.eval.positions import score_positions  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = torch.load(ROOT / "tests" / "data" / "official_eval_fixture.pt", weights_only=True)
VECTOR = torch.load(ROOT / "tests" / "data" / "official_quietstar_tiny.pt", weights_only=True)
SAMPLES = {"gsm8k": ROOT / "examples" / "data" / "gsm8k_sample.jsonl",
           "commonsense_qa": ROOT / "examples" / "data" / "commonsense_qa_sample.jsonl"}
TASKS = tuple(SAMPLES)
WINDOW_KEYS = {"with": "thought_logits_window", "without": "base_logits_window"}
FP32_ULPS_PER_FACTOR = 8  # the official fp32 factor: softmax over V, then a renormalising sum and divide


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def official_model(impl: str = "fast", kernel_impl: str = "auto", dtype: torch.dtype = torch.float32) -> QuietStar:
    """The official test vector's tiny Mistral with its non-zero mixing head (the thoughts change the scores)."""
    model = transformers.MistralForCausalLM(transformers.MistralConfig(**TINY_MISTRAL))
    quiet = QuietStar(model, start_token_id=300, end_token_id=301, init_token_id=7, pad_token_id=2, impl=impl,
                      kernel_impl=kernel_impl, n_ahead=N_AHEAD, n_ahead_talk=4, n_passes=2)
    quiet.load_official_state_dict(VECTOR["cases"]["nonzero"]["state_dict"])
    return quiet.to(dtype)


def windowed(hidden: torch.Tensor, starts: torch.Tensor, width: int) -> torch.Tensor:
    return torch.stack([hidden[row, start:start + width] for row, start in enumerate(starts.tolist())])


def scores_of(quiet: QuietStar, task: str):
    case = FIXTURE[task]
    rows, seq_len = case["input_ids"].shape
    noise = thought_noise(rows, seq_len)
    assert noise.double().sum() == case["noise_sum"], "torch's generator drew other noise than the fixture's"
    dtype = quiet.model.lm_head.weight.dtype
    return score_tokens(quiet, case["input_ids"], case["attention_mask"], gumbel_noise=noise.to(dtype))


def factor_counts(tokenizer, input_ids: torch.Tensor) -> torch.Tensor:
    answer_tokens = AnswerTokens.from_tokenizer(tokenizer)
    return torch.tensor([len(scored_tokens(tokenizer, ids, answer_tokens)) for ids in input_ids.tolist()])


@pytest.mark.parametrize("task", TASKS)
def test_the_samples_tokenize_as_the_official_preprocessing(task, tokenizer):
    ids, mask = encode_eval_texts(tokenizer, task_texts(task, load_examples(task, SAMPLES[task])))
    assert torch.equal(ids, FIXTURE[task]["input_ids"]) and torch.equal(mask, FIXTURE[task]["attention_mask"])


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("column", ["with", "without"])
def test_the_metric_port_equals_compute_metrics_on_the_official_logits(task, column, tokenizer):
    """The metric alone: fed the official model's own logits, our port gives the official per-question numbers."""
    case = FIXTURE[task]
    logits, starts = case[WINDOW_KEYS[column]], case["window_start"]

    def logits_at(row, positions, ids):
        inside = logits[row, positions - starts[row]]
        return inside if ids is None else inside[:, ids]

    ours = answer_probabilities(tokenizer, case["input_ids"], logits_at)
    official = torch.tensor(case[f"per_question_{column}_thoughts"], dtype=torch.float64)
    factors = factor_counts(tokenizer, case["input_ids"])
    assert bool((factors > 0).all())
    # compute_metrics multiplies fp32 factors; ours are fp64 from the same logits.
    rtol = FP32_ULPS_PER_FACTOR * factors * torch.finfo(torch.float32).eps
    assert bool(((ours - official).abs() <= rtol * official).all()), (ours, official)
    assert abs(float(ours.mean()) - case[f"accuracy_{column}_thoughts"]) <= float((rtol * official).sum()) / len(ours)


def test_the_allowed_tokens_are_the_official_pieces(tokenizer):
    """On a tokenizer that splits as Mistral's, the derived ids are the pieces the official lists name: the ten
    digits, " A" .. " E", and the newline."""
    tokens = AnswerTokens.from_tokenizer(tokenizer)
    assert tokenizer.convert_ids_to_tokens(list(tokens.numbers)) == list("0123456789") + ["\n"]
    assert tokenizer.convert_ids_to_tokens(list(tokens.letters)) == ["▁A", "▁B", "▁C", "▁D", "▁E", "\n"]


def test_numbers_with_an_attached_space_are_allowed():
    """A GPT-2-style byte-level tokenizer writes " 72" as one token with the space: the derived set holds such digit
    tokens, so a numeric answer is scored instead of skipped."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    pieces = (["<|endoftext|>"] + [chr(c) for c in range(33, 127)]
              + ["Ġ", "Ċ", "Ġ7", "Ġ72", "ĠA", "ĠB", "ĠC", "ĠD", "ĠE", "72"])
    vocab = {piece: index for index, piece in enumerate(pieces)}
    merges = [("Ġ", "7"), ("Ġ7", "2"), ("7", "2")] + [("Ġ", letter) for letter in "ABCDE"]
    raw = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    gpt2_like = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>",
                                                     pad_token="<|endoftext|>")
    tokens = AnswerTokens.from_tokenizer(gpt2_like)
    assert {"Ġ7", "Ġ72", "72", "7"} <= set(gpt2_like.convert_ids_to_tokens(list(tokens.numbers)))
    ids = gpt2_like.encode("Q: q\nA: 72\n")
    factors = scored_tokens(gpt2_like, ids, tokens)
    assert [gpt2_like.convert_ids_to_tokens(f.token) for f in factors] == ["Ġ72", "Ċ"]


# Triton is left out: interpreted at n = 256 it takes minutes, and the fast step's backends agree with each other in
# test_quietstar.py and test_attention_backends.py.
@pytest.mark.parametrize("impl, kernel_impl", [("fast", "auto"), ("fast", "torch"), ("reference", "auto")])
@pytest.mark.parametrize("task", TASKS)
def test_scores_reproduce_the_official_eval_forward(task, impl, kernel_impl, tokenizer):
    """The same model, weights, batch and noise as the official eval forward: our mixed and base logits and both
    columns of the official metric, within the fp32-vs-fp64 spread of our own reference (tests/tolerance.py) plus,
    for the metric, the official fp32 factors' rounding."""
    case = FIXTURE[task]
    models = {"ours": official_model(impl, kernel_impl), "fp32": official_model("reference"),
              "fp64": official_model("reference", dtype=torch.float64)}
    scores = {name: scores_of(quiet, task) for name, quiet in models.items()}
    assert torch.equal(scores["ours"].thought_tokens, scores["fp64"].thought_tokens), "fp64 sampled other thoughts"
    starts, width = case["window_start"], case["thought_logits_window"].shape[1]
    factors = factor_counts(tokenizer, case["input_ids"])
    for column, key in WINDOW_KEYS.items():
        hidden = {name: s.thought_hidden if column == "with" else s.base_hidden for name, s in scores.items()}
        logits = {name: logits_for(windowed(hidden[name], starts, width), models[name].model.lm_head.weight)
                  for name in models}
        official = case[key]
        bound = spread_bound(max_abs_error(logits["fp32"], logits["fp64"]), float(official.abs().max()))
        assert max_abs_error(logits["ours"], official) <= bound, column
        probabilities = {name: answer_probabilities(
            tokenizer, case["input_ids"], lambda row, positions, ids, name=name: logits_for(
                hidden[name][row, positions], models[name].model.lm_head.weight, ids)) for name in models}
        expected = torch.tensor(case[f"per_question_{column}_thoughts"], dtype=torch.float64)
        spread = ((probabilities["fp32"] - probabilities["fp64"]).abs() / probabilities["fp64"]).max()
        rtol = spread_bound(float(spread), 1.0) + FP32_ULPS_PER_FACTOR * factors * torch.finfo(torch.float32).eps
        assert bool(((probabilities["ours"] - expected).abs() <= rtol * expected).all()), column


@pytest.mark.parametrize("task", TASKS)
def test_thinking_at_the_answer_positions_only_reproduces_the_official_eval_forward(task):
    """score_positions (step 0 over the rows, then one thought per chosen position on a cropped cache) gives the
    official logits at those positions: the fixture's windows of the last real positions, with its noise."""
    case = FIXTURE[task]
    rows_count, seq_len = case["input_ids"].shape
    starts, width = case["window_start"], case["thought_logits_window"].shape[1]
    rows = torch.arange(rows_count).repeat_interleave(width)
    positions = (starts[:, None] + torch.arange(width)).reshape(-1)
    noise = thought_noise(rows_count, seq_len)
    models = {"ours": official_model(), "fp32": official_model("reference"),
              "fp64": official_model("reference", dtype=torch.float64)}
    ours = score_positions(models["ours"], case["input_ids"], case["attention_mask"], rows, positions,
                           gumbel_noise=noise, max_thoughts_per_call=7)  # chunks that split rows
    full = {name: scores_of(models[name], task) for name in ("fp32", "fp64")}
    assert torch.equal(ours.thought_tokens, windowed(full["fp64"].thought_tokens, starts, width).flatten(0, 1))
    for column, key in WINDOW_KEYS.items():
        hidden = ours.thought_hidden if column == "with" else ours.base_hidden
        logits = logits_for(hidden, models["ours"].model.lm_head.weight).view(rows_count, width, -1)
        spread = {name: logits_for(windowed(s.thought_hidden if column == "with" else s.base_hidden, starts, width),
                                   models[name].model.lm_head.weight) for name, s in full.items()}
        bound = spread_bound(max_abs_error(spread["fp32"], spread["fp64"]), float(case[key].abs().max()))
        assert max_abs_error(logits, case[key]) <= bound, column


def test_positions_must_be_real_tokens():
    quiet = official_model()
    ids, mask = torch.randint(3, 300, (2, 6)), torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    with pytest.raises(ValueError, match="real token"):
        score_positions(quiet, ids, mask, torch.tensor([1]), torch.tensor([5]))
    with pytest.raises(ValueError, match="one shape"):
        score_positions(quiet, ids, mask, torch.tensor([0, 1]), torch.tensor([1]))


def test_evaluate_task_gives_the_official_table_numbers(tokenizer):
    """The whole driver (loading, formatting, batching, cutting each batch to its longest row) over the sample
    files: with the official noise it is the fixture's table; batches of 2 give the same numbers as one batch."""
    quiet = official_model()
    for task in TASKS:
        examples = load_examples(task, SAMPLES[task])
        seeded = [evaluate_task(quiet, tokenizer, task, examples, batch_size=size,
                                generator=torch.Generator().manual_seed(0)) for size in (len(examples), 2)]
        for result in seeded:
            assert 0 < result.with_thoughts < 1 and 0 < result.without_thoughts < 1
            assert result.row()["questions"] == len(examples)
        # without thoughts no noise is involved: batching and width cutting change nothing
        torch.testing.assert_close(seeded[0].per_question_without_thoughts, seeded[1].per_question_without_thoughts,
                                   rtol=1e-5, atol=0)
        expected = torch.tensor(FIXTURE[task]["per_question_without_thoughts"], dtype=torch.float64)
        torch.testing.assert_close(seeded[0].per_question_without_thoughts, expected, rtol=1e-4, atol=0)


def test_a_zero_mixing_head_scores_as_the_base_model(tokenizer):
    """w = 0 (the official initialisation): the with-thoughts column equals the without-thoughts one."""
    quiet = official_model()
    torch.nn.init.zeros_(quiet.talk_head[0][4].weight)
    result = evaluate_task(quiet, tokenizer, "gsm8k", load_examples("gsm8k", SAMPLES["gsm8k"]))
    torch.testing.assert_close(result.per_question_with_thoughts, result.per_question_without_thoughts)


def test_score_tokens_leaves_the_model_as_it_was():
    quiet = official_model().train()
    settings = quiet.quietstar_config
    ids = torch.randint(3, 300, (2, 9))
    scores = score_tokens(quiet, ids)
    assert quiet.training and quiet.quietstar_config is settings
    assert scores.thought_logprobs.shape == (2, 8) and scores.thought_tokens.shape == (2, 9, N_AHEAD - 3)
    # the log-probs are those of the hidden states the scores return
    weight = quiet.model.lm_head.weight
    expected = logits_for(scores.thought_hidden[:, :-1], weight).log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
    torch.testing.assert_close(scores.thought_logprobs, expected, rtol=1e-5, atol=1e-5)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_examples("mmlu", SAMPLES["gsm8k"])
    with pytest.raises(FileNotFoundError, match="no such data file"):
        load_examples("gsm8k", "/nonexistent.jsonl")
    with pytest.raises(ValueError, match="lacks the field"):
        load_examples("commonsense_qa", SAMPLES["gsm8k"])
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_task(official_model(), build_tokenizer(), "gsm8k", load_examples("gsm8k", SAMPLES["gsm8k"]),
                      batch_size=0)


def test_the_original_commonsense_qa_format_loads(tmp_path):
    original = tmp_path / "dev_rand_split.jsonl"
    original.write_text('{"answerKey": "B", "id": "x", "question": {"question_concept": "c", "stem": "Why?", '
                        '"choices": [{"label": "A", "text": "a"}, {"label": "B", "text": "b"}]}}\n')
    (example,) = load_examples("commonsense_qa", original)
    assert example == {"question": "Why?", "answerKey": "B", "choices": {"label": ["A", "B"], "text": ["a", "b"]}}


def test_the_scoring_benchmark_measures_every_provider(tmp_path):
    """benchmarks/bench_eval.py on a short run: a time and a memory row per provider."""
    import csv
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_eval.py"), "--models", "tiny",
                             "--batch", "1", "--seq-len", "16", "--n-ahead", "4", "--repeats", "1",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = list(csv.DictReader(open(tmp_path / "eval_cpu.csv")))
    providers, metrics = ("reference", "fast", "fast-positions"), ("time", "peak_memory")
    assert {(row["kernel_provider"], row["metric_name"]) for row in rows} == {
        (provider, metric) for provider in providers for metric in metrics}
    assert all(float(row["y_value_50"]) > 0 for row in rows if row["metric_name"] == "time")


def test_the_evaluate_example_prints_the_table(tmp_path):
    """examples/evaluate.py on a saved QuietStar directory (with its tokenizer): both tasks, both columns, and the
    CoT row; the JSON holds what the table shows."""
    import json
    import subprocess
    import sys

    directory = tmp_path / "model"
    official_model().save_pretrained(directory)
    build_tokenizer().save_pretrained(directory)
    out = tmp_path / "results.json"
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "evaluate.py"), "--model", str(directory),
                             "--limit", "2", "--cot", "--votes", "2", "--cot-tokens", "3", "--json", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(out.read_text())
    assert [row["task"] for row in rows] == ["gsm8k", "commonsense_qa", "gsm8k CoT maj@2 (accuracy)"]
    assert all(0 < row["with_thoughts"] < 1 and 0 < row["without_thoughts"] < 1 for row in rows[:2])
    assert all(row["questions"] == 2 for row in rows)
    assert "| gsm8k " in result.stdout and "| commonsense_qa " in result.stdout


def test_parquet_files_load_like_jsonl(tmp_path):
    """The Hub's Parquet export of a dataset reads as its JSONL (pyarrow comes with lm-eval's datasets)."""
    parquet = pytest.importorskip("pyarrow.parquet", reason="reading .parquet needs pyarrow")
    import pyarrow

    examples = load_examples("commonsense_qa", SAMPLES["commonsense_qa"])
    path = tmp_path / "validation.parquet"
    parquet.write_table(pyarrow.Table.from_pylist(examples), path)
    assert load_examples("commonsense_qa", path) == examples
