"""Thinking generation on batches of prompts of different lengths (left padding), verified token by token against an
uncached recomputation of each row alone; nucleus sampling; the streamer protocol; bad input."""
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the HF integration tests need transformers")

from test_quietstar import FAMILIES, _tiny_pair, _uncached_next_token  # noqa: E402

from quietstar_fast.quietstar.generate import next_token_from_logits  # noqa: E402

LENGTHS = (7, 3, 1, 5)


def _left_padded_prompts(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.randint(1, 95, (length,), generator=generator) for length in LENGTHS]
    ids = torch.zeros(len(rows), max(LENGTHS), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(rows):
        ids[row, ids.shape[1] - len(prompt):] = prompt
        mask[row, ids.shape[1] - len(prompt):] = 1
    return ids, mask, rows


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_padded_batch_equals_recomputing_each_row_alone(family):
    """Every generated token of every row equals the greedy choice of an uncached causal pass over that row alone
    (unpadded prompt, tokens so far, the thought the batch sampled): padding, positions and the crop are right."""
    _, fast = _tiny_pair(family)
    ids, mask, rows = _left_padded_prompts()
    new = 4
    out = fast.generate(ids, mask, max_new_tokens=new, eos_token_id=None, generator=torch.Generator().manual_seed(0))
    assert out.sequences.shape == (len(rows), ids.shape[1] + new)
    assert torch.equal(out.sequences[:, :ids.shape[1]], ids)
    generated = out.sequences[:, ids.shape[1]:]
    with torch.no_grad():
        for row, prompt in enumerate(rows):
            for t in range(new):
                prefix = torch.cat([prompt, generated[row, :t]])[None]
                expected = _uncached_next_token(fast, prefix, out.thoughts[row:row + 1, t])
                assert int(expected) == int(generated[row, t]), f"{family} row {row} token {t}"


def test_padded_batch_detects_wrong_positions():
    """Negative control: the same check fails when the positions ignore the padding (every row counted from column
    0), so the equality above is not vacuous."""
    _, fast = _tiny_pair("llama")
    ids, mask, rows = _left_padded_prompts()
    out = fast.generate(ids, torch.ones_like(mask), max_new_tokens=2, eos_token_id=None,
                        generator=torch.Generator().manual_seed(0))
    generated = out.sequences[:, ids.shape[1]:]
    with torch.no_grad():
        mismatches = sum(int(_uncached_next_token(fast, torch.cat([prompt, generated[row, :t]])[None],
                                                  out.thoughts[row:row + 1, t])) != int(generated[row, t])
                         for row, prompt in enumerate(rows) if len(prompt) < ids.shape[1] for t in range(2))
    assert mismatches > 0


def test_top_p_samples_only_from_the_nucleus_in_proportion():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(20000, -1)
    generator = torch.Generator().manual_seed(0)
    counts = torch.bincount(next_token_from_logits(logits, True, 1.0, 0.7, generator), minlength=4).double()
    assert counts[2:].sum() == 0  # 0.5 + 0.3 reach 0.7: the nucleus is the first two
    share = counts[0] / counts.sum()
    expected = 0.5 / 0.8
    assert abs(share - expected) < 5 * (expected * (1 - expected) / counts.sum()) ** 0.5
    only_first = next_token_from_logits(logits[:100], True, 1.0, 0.5, generator)
    assert bool((only_first == 0).all())
    assert torch.equal(next_token_from_logits(logits[:3], False, 1.0, 0.1, None), torch.zeros(3, dtype=torch.long))


def test_sampling_with_top_p_generates_valid_tokens_reproducibly():
    _, fast = _tiny_pair("qwen3")
    ids, mask, _ = _left_padded_prompts(1)
    runs = [fast.generate(ids, mask, max_new_tokens=3, do_sample=True, temperature=0.8, top_p=0.9,
                          eos_token_id=None, generator=torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(runs[0].sequences, runs[1].sequences) and torch.equal(runs[0].thoughts, runs[1].thoughts)
    assert not torch.isin(runs[0].sequences[:, ids.shape[1]:], torch.tensor([95, 96])).any()


class _RecordingStreamer:
    """The protocol of transformers' TextStreamer: put(prompts), put(new tokens) per step, end()."""

    def __init__(self):
        self.calls = []

    def put(self, value):
        self.calls.append(("put", value.clone()))

    def end(self):
        self.calls.append(("end", None))


def test_streamer_receives_the_prompt_then_each_token_then_end():
    _, fast = _tiny_pair("llama")
    ids, mask, _ = _left_padded_prompts()
    streamer = _RecordingStreamer()
    out = fast.generate(ids, mask, max_new_tokens=3, eos_token_id=None, streamer=streamer,
                        generator=torch.Generator().manual_seed(0))
    assert [kind for kind, _ in streamer.calls] == ["put", "put", "put", "put", "end"]
    assert torch.equal(streamer.calls[0][1], ids)
    for t in range(3):
        assert torch.equal(streamer.calls[1 + t][1], out.sequences[:, ids.shape[1] + t])


def test_text_streamer_prints_the_generated_text(capsys):
    class Characters:
        """The smallest tokenizer TextStreamer needs: decode ids to text."""

        def decode(self, ids, **kwargs):
            return "".join(chr(ord("a") + int(i) % 26) for i in ids)

    _, fast = _tiny_pair("llama")
    prompt = torch.randint(1, 95, (1, 4))
    out = fast.generate(prompt, max_new_tokens=5, eos_token_id=None, generator=torch.Generator().manual_seed(0),
                        streamer=transformers.TextStreamer(Characters(), skip_prompt=True))
    assert capsys.readouterr().out.strip() == Characters().decode(out.sequences[0, 4:])


def test_bad_generation_input_is_refused():
    _, fast = _tiny_pair("llama")
    ids = torch.randint(1, 95, (2, 5))
    right_padded = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with pytest.raises(ValueError, match="left-padded"):
        fast.generate(ids, right_padded)
    with pytest.raises(ValueError, match="at least one real token"):
        fast.generate(ids, torch.tensor([[0, 0, 0, 0, 0], [1, 1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        fast.generate(ids, torch.ones(2, 4))
    with pytest.raises(ValueError, match="top_p must be in"):
        fast.generate(ids, top_p=0.0)
    with pytest.raises(ValueError, match="temperature must be positive"):
        fast.generate(ids, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="input_ids must be a non-empty"):
        fast.generate(ids[0])


def test_generation_benchmark_measures_both_methods(tmp_path):
    """benchmarks/bench_generate.py on a short run: a row per provider and metric, the official method's output
    length right (its loop appends one token per re-run)."""
    import csv
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_generate.py"
    result = subprocess.run([sys.executable, str(script), "--models", "tiny", "--batch", "2", "--prompt-len", "8",
                             "--new-tokens", "3", "--n-ahead", "4", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = list(csv.DictReader(open(tmp_path / "generate_cpu.csv")))
    measured = {(row["kernel_provider"], row["metric_name"]) for row in rows}
    assert measured == {(provider, metric) for provider in ("official", "cached")
                        for metric in ("tokens_per_s", "time_per_token", "peak_memory")}
    assert all(float(row["y_value_50"]) > 0 for row in rows if row["metric_name"] != "peak_memory")


def test_official_method_appends_the_mixed_greedy_token():
    """The benchmark's official-method baseline predicts, at the last position, what the cached generation predicts
    given the same thought: its last-position thought equals the uncached recomputation's input."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import bench_generate

    reference, _ = _tiny_pair("llama")
    quiet = type(reference)(reference.model, start_token_id=95, end_token_id=96, init_token_id=5, n_ahead=5,
                            n_ahead_talk=1, n_passes=1, impl="reference", kernel_impl="torch")
    prompt = torch.randint(1, 95, (2, 6))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        out = quiet(prompt, generator=torch.Generator().manual_seed(0), output_hidden_states=True)
        expected = _uncached_next_token(quiet, prompt, out.thought_tokens[:, :, -1].T)
    sequence = bench_generate.official_generate(quiet, prompt, 1, generator)
    assert torch.equal(sequence[:, :6], prompt) and torch.equal(sequence[:, 6], expected)


def test_any_of_several_eos_ids_finishes_a_row():
    """Llama 3.x lists several eos ids: emitting any of them finishes a row."""
    _, fast = _tiny_pair("llama")
    with torch.no_grad():  # all-zero logits: greedy emits id 0 at every step
        fast.model.get_output_embeddings().weight.zero_()
    prompt = torch.randint(1, 95, (2, 5))
    assert fast.generate(prompt, max_new_tokens=6, eos_token_id=[5]).sequences.shape == (2, 11)
    stopped = fast.generate(prompt, max_new_tokens=6, eos_token_id=[5, 0]).sequences
    assert stopped.shape == (2, 6) and bool((stopped[:, -1] == 0).all())
