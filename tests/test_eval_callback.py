"""``OfficialEvalCallback``: the official metric with and without thoughts, logged through the Trainer every k
steps, on the model as trained so far."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="needs transformers")
pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")

from mistral_like_tokenizer import build_tokenizer  # noqa: E402
from test_official_eval import SAMPLES, official_model  # noqa: E402

from quietstar_fast.eval import evaluate_task, load_examples  # noqa: E402
from quietstar_fast.eval.callback import OfficialEvalCallback  # noqa: E402
from quietstar_fast.trainer import QuietStarTrainer  # noqa: E402


class Windows(torch.utils.data.Dataset):
    """Tokenized lines of the GSM8K sample, as a training corpus."""

    def __init__(self, tokenizer):
        examples = load_examples("gsm8k", SAMPLES["gsm8k"])
        self.rows = [tokenizer.encode(e["question"])[:24] for e in examples]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return {"input_ids": self.rows[index]}


def collate(examples):
    length = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), length), 2)
    for row, example in enumerate(examples):
        ids[row, :len(example["input_ids"])] = torch.tensor(example["input_ids"])
    return {"input_ids": ids, "attention_mask": (ids != 2).long(), "labels": ids.clone()}


def test_the_metrics_are_logged_every_k_steps(tmp_path):
    tokenizer = build_tokenizer()
    quiet = official_model(kernel_impl="torch")
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2,
                                          learning_rate=1e-2, seed=0, report_to=[], use_cpu=True, logging_steps=1,
                                          disable_tqdm=True, save_strategy="no")
    trainer = QuietStarTrainer(model=quiet, args=args, train_dataset=Windows(tokenizer), data_collator=collate)
    examples = {task: load_examples(task, SAMPLES[task], limit=3) for task in SAMPLES}
    callback = OfficialEvalCallback(trainer, tokenizer, examples, every_n_steps=2, batch_size=2, seed=7)
    trainer.add_callback(callback)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "official_gsm8k_with_thoughts" in entry]
    assert [entry["step"] for entry in logged] == [2] and [entry["step"] for entry in callback.history] == [2]
    for task in SAMPLES:
        for column in ("with", "without"):
            assert 0 < logged[0][f"official_{task}_{column}_thoughts"] < 1
    # step 3 trained after the evaluation: the logged numbers are not the final model's
    final = evaluate_task(quiet, tokenizer, "gsm8k", examples["gsm8k"], batch_size=2,
                          generator=torch.Generator().manual_seed(7 + 2))
    assert final.without_thoughts != logged[0]["official_gsm8k_without_thoughts"]


def test_the_evaluation_is_that_of_evaluate_task(tmp_path):
    """At the last step the model is the final one: the logged numbers are evaluate_task's with seed + step."""
    tokenizer = build_tokenizer()
    quiet = official_model(kernel_impl="torch")
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2,
                                          learning_rate=1e-2, seed=0, report_to=[], use_cpu=True,
                                          disable_tqdm=True, save_strategy="no")
    trainer = QuietStarTrainer(model=quiet, args=args, train_dataset=Windows(tokenizer), data_collator=collate)
    examples = {"commonsense_qa": load_examples("commonsense_qa", SAMPLES["commonsense_qa"], limit=2)}
    callback = OfficialEvalCallback(trainer, tokenizer, examples, every_n_steps=2, batch_size=2, seed=7)
    trainer.add_callback(callback)
    trainer.train()
    final = evaluate_task(quiet, tokenizer, "commonsense_qa", examples["commonsense_qa"], batch_size=2,
                          generator=torch.Generator().manual_seed(7 + 2))
    assert callback.history == [{"step": 2, "official_commonsense_qa_with_thoughts": final.with_thoughts,
                                 "official_commonsense_qa_without_thoughts": final.without_thoughts}]


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="unknown tasks"):
        OfficialEvalCallback(None, None, {"mmlu": []})
    with pytest.raises(ValueError, match="every_n_steps"):
        OfficialEvalCallback(None, None, {"gsm8k": []}, every_n_steps=0)
