"""An lm-evaluation-harness model: any lm-eval task scored with thoughts (the mixed talk head), on the fast path.

    quietstar-lm-eval --model quietstar --model_args pretrained=DIR,dtype=bfloat16 --tasks ...
    python -m quietstar_fast.eval.lm_eval_model --model quietstar ...          # the same

lm-eval's own ``lm_eval`` command only knows its built-in models and has no plugin hook, so ``quietstar-lm-eval`` is
that command with the "quietstar" model registered (same arguments). From Python, importing this module registers it
(``lm_eval.simple_evaluate(model="quietstar", ...)``), or pass ``QuietStarLM(quiet=..., tokenizer=...)`` itself.

- ``loglikelihood``: log p(continuation | context) with a thought before every continuation token: the official
  eval forward (one talk step), the same numbers as ``score_tokens``; ``is_greedy`` compares with the argmax of the
  mixed logits.
- ``loglikelihood_rolling``: lm-eval's disjoint windows of ``max_length`` tokens, each scored the same way.
- ``generate_until``: ``QuietStar.generate`` (a thought before each generated token), cut at the ``until`` strings.
"""
from __future__ import annotations

import sys
import warnings

import torch
from lm_eval import utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from .positions import score_positions
from .scoring import logits_for, score_tokens

THINK_AT = ("auto", "positions", "all")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@register_model("quietstar")
class QuietStarLM(TemplateLM):
    """lm-eval model around a ``QuietStar``: ``pretrained`` (a ``QuietStar.save_pretrained`` directory holding the
    tokenizer too) or ``quiet`` + ``tokenizer`` objects."""

    def __init__(self, pretrained: str | None = None, *, quiet=None, tokenizer=None, dtype: str = "float32",
                 device: str | None = None, batch_size: int | str = 8, max_length: int | str | None = None,
                 kernel_impl: str = "auto", seed: int | str = 0, max_gen_toks: int | str = 256,
                 max_batch_size: int | None = None, think_at: str = "auto"):
        """``batch_size`` (lm-eval's ``--batch_size``) is fixed: "auto" is refused; ``max_batch_size``, the ceiling of
        lm-eval's automatic search, is accepted for its command line and unused. ``think_at``: "positions" thinks
        only where a continuation token is predicted (``score_positions``), "all" at every position of the batch
        (``score_tokens``, the official eval forward), "auto" picks "positions" when they are at most a quarter of
        the batch's tokens (multiple-choice answers after long contexts), else "all" (rolling perplexity)."""
        super().__init__()
        if (pretrained is None) == (quiet is None):
            raise ValueError("give either pretrained=DIR or quiet= a QuietStar (with tokenizer=)")
        if quiet is None:
            from transformers import AutoTokenizer

            from ..quietstar import QuietStar

            if dtype not in DTYPES:
                raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
            quiet = QuietStar.from_pretrained(pretrained, kernel_impl=kernel_impl, dtype=DTYPES[dtype])
            tokenizer = AutoTokenizer.from_pretrained(pretrained)
            if device is not None:
                quiet = quiet.to(_available(device))
        if tokenizer is None:
            raise ValueError("tokenizer= is required with quiet=")
        self.quiet, self.tokenizer = quiet, tokenizer
        if not str(batch_size).isdigit() or int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = int(batch_size)
        positions = getattr(quiet.model.config, "max_position_embeddings", 2048)
        # a sequence of max_length + 1 tokens thinks at positions up to max_length + N - 1
        self.max_length = int(max_length) if max_length is not None else positions - quiet.quietstar_config.n_ahead
        self.max_gen_toks = int(max_gen_toks)
        if think_at not in THINK_AT:
            raise ValueError(f"think_at must be one of {THINK_AT}, got {think_at!r}")
        self.think_at = think_at
        self._device = quiet.model.get_output_embeddings().weight.device  # lm-eval's LM.device reads it
        self.generator = torch.Generator(device=self._device).manual_seed(int(seed))

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens))

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.eot_token_id

    def _score(self, sequences: list[list[int]], continuation_lengths: list[int]) -> list[tuple[float, bool]]:
        """(sum of log p, all greedy) of the last ``continuation_lengths[k]`` tokens of each sequence, with
        thoughts; as lm-eval's HF model, at most ``max_length`` tokens predict (the sequence keeps its last
        ``max_length + 1``); scored in length-sorted batches."""
        weight = self.quiet.model.get_output_embeddings().weight
        results: list[tuple[float, bool] | None] = [None] * len(sequences)
        order = sorted(range(len(sequences)), key=lambda k: -min(len(sequences[k]), self.max_length + 1))
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            rows = [sequences[k][-(self.max_length + 1):] for k in batch]
            width = max(3, max(len(row) for row in rows))  # the training call needs 3 columns
            ids = torch.full((len(rows), width), self._pad_id(), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, tokens in enumerate(rows):
                ids[row, :len(tokens)] = torch.tensor(tokens)
                mask[row, :len(tokens)] = 1
            counts = [min(continuation_lengths[k], len(rows[row]) - 1) for row, k in enumerate(batch)]
            hidden = self._thought_hidden(ids, mask, [range(len(tokens) - 1 - count, len(tokens) - 1)
                                                      for tokens, count in zip(rows, counts)])
            for row, (k, predicted) in enumerate(zip(batch, hidden)):
                logprobs = logits_for(predicted, weight).log_softmax(-1)
                length = len(rows[row])
                targets = torch.tensor(rows[row][length - counts[row]:], device=self._device)
                results[k] = (float(logprobs.gather(1, targets[:, None]).sum()),
                              bool((logprobs.argmax(-1) == targets).all()))
        return results

    def _thought_hidden(self, ids: torch.Tensor, mask: torch.Tensor, positions: list[range]) -> list[torch.Tensor]:
        """Per row, the mixed hidden states (k, D) at its ``positions`` (consecutive), thinking where ``think_at``
        says."""
        ids, mask = ids.to(self._device), mask.to(self._device)
        chosen = sum(len(p) for p in positions)
        if self.think_at == "positions" or (self.think_at == "auto" and 4 * chosen <= int(mask.sum())):
            rows = torch.tensor([row for row, p in enumerate(positions) for _ in p], dtype=torch.long)
            columns = torch.tensor([column for p in positions for column in p], dtype=torch.long)
            scores = score_positions(self.quiet, ids, mask, rows, columns, generator=self.generator)
            return list(scores.thought_hidden.split([len(p) for p in positions]))
        scores = score_tokens(self.quiet, ids, mask, generator=self.generator)
        return [scores.thought_hidden[row, p.start:p.stop] for row, p in enumerate(positions)]

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        results = self._score([context + continuation for _, context, continuation in requests],
                              [len(continuation) for _, _, continuation in requests])
        for (pair, _, _), result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", pair, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        totals = []
        for (string,) in (request.args for request in requests):
            windows = [utils.make_disjoint_window(window) for window in utils.get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            scored = self._score([context + continuation for context, continuation in windows],
                                 [len(continuation) for _, continuation in windows])
            total = sum(logprob for logprob, _ in scored)
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            totals.append(total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        outputs = []
        for context, gen_kwargs in (request.args for request in requests):
            kwargs = dict(gen_kwargs)
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            temperature = float(kwargs.pop("temperature", 0.0))
            do_sample = bool(kwargs.pop("do_sample", temperature > 0))
            prompt = self.tok_encode(context, add_special_tokens=True)[-(self.max_length - max_new):]
            ids = torch.tensor([prompt], device=self._device)
            out = self.quiet.generate(ids, max_new_tokens=max_new, do_sample=do_sample,
                                      temperature=temperature if do_sample else 1.0, generator=self.generator,
                                      eos_token_id=self.eot_token_id)
            text = self.tok_decode(out.sequences[0, len(prompt):].tolist())
            for stop in until:
                text = text.split(stop)[0]
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            outputs.append(text)
        return outputs


def _available(device: str) -> str:
    """lm-eval passes ``--device cuda`` by default: without a GPU, run on the CPU as its HF model does."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        warnings.warn(f"device {device!r} requested but CUDA is not available: running on the CPU", stacklevel=3)
        return "cpu"
    return device


def main() -> None:
    """``lm_eval``'s command line with the "quietstar" model registered."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv[0] = "quietstar-lm-eval"
    cli_evaluate()


if __name__ == "__main__":
    main()
