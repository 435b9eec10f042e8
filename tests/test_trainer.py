"""QuietStar with the HF Trainer and on disk: the output is a ModelOutput the Trainer reads, labels from a collator are
honoured, ``save_pretrained`` / ``from_pretrained`` give back the same model, and Trainer checkpoints reload in one
line and resume exactly."""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the HF integration tests need transformers")
pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate (pinned in requirements-cpu.txt)")

from quietstar_fast import QuietStar  # noqa: E402
from quietstar_fast.trainer import QuietStarTrainer  # noqa: E402

PAD = 0


def _quietstar(tie: bool = True, **options) -> QuietStar:
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      tie_word_embeddings=tie, pad_token_id=PAD, eos_token_id=PAD,
                                      attn_implementation="sdpa")
    torch.manual_seed(0)
    quiet = QuietStar(transformers.LlamaForCausalLM(config), start_token_id=95, end_token_id=96, init_token_id=5,
                      kernel_impl="torch", **{"n_ahead": 5, "n_ahead_talk": 2, "n_passes": 2, **options})
    with torch.no_grad():  # a non-zero mixing head, so the talk and policy terms depend on it
        quiet.talk_head[0][4].weight.normal_(0, 0.5)
    return quiet


class _Texts(torch.utils.data.Dataset):
    """Token sequences of different lengths (8..14), as a tokenized corpus gives them."""

    def __len__(self):
        return 16

    def __getitem__(self, index):
        generator = torch.Generator().manual_seed(index)
        return {"input_ids": torch.randint(1, 95, (8 + index % 7,), generator=generator).tolist()}


def right_padding_collator(examples: list[dict]) -> dict[str, torch.Tensor]:
    """As the official collator: right padding with the pad id, labels a copy of input_ids (the model ignores the
    pad id in them)."""
    length = max(len(example["input_ids"]) for example in examples)
    ids = torch.full((len(examples), length), PAD)
    mask = torch.zeros(len(examples), length, dtype=torch.long)
    for row, example in enumerate(examples):
        ids[row, :len(example["input_ids"])] = torch.tensor(example["input_ids"])
        mask[row, :len(example["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.clone()}


def _loss(quiet: QuietStar, batch: dict, **extra) -> torch.Tensor:
    with torch.no_grad():
        return quiet(**batch, generator=torch.Generator().manual_seed(3), **extra).loss


def _trainer(quiet: QuietStar, output_dir, max_steps: int, save_steps: int) -> QuietStarTrainer:
    args = transformers.TrainingArguments(output_dir=str(output_dir), max_steps=max_steps, save_steps=save_steps,
                                          per_device_train_batch_size=4, learning_rate=1e-3, seed=0, report_to=[],
                                          use_cpu=True, logging_steps=1, disable_tqdm=True)
    return QuietStarTrainer(model=quiet, args=args, train_dataset=_Texts(), data_collator=right_padding_collator)


def test_output_is_a_model_output_whose_loss_the_trainer_finds():
    out = _quietstar()(**right_padding_collator([_Texts()[i] for i in range(3)]))
    assert isinstance(out, transformers.utils.ModelOutput)
    assert out["loss"] is out.loss and out[0] is out.loss and "hidden_states" not in out


def test_labels_from_the_collator_are_the_targets():
    quiet = _quietstar()
    batch = right_padding_collator([_Texts()[i] for i in range(3)])
    ids_only = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    assert torch.equal(_loss(quiet, batch), _loss(quiet, ids_only))
    labels = batch["labels"].clone()
    labels[:, :5] = -100  # e.g. a prompt the loss leaves out
    with torch.no_grad():
        out = quiet(**ids_only, labels=labels, generator=torch.Generator().manual_seed(3))
        full = quiet(**ids_only, generator=torch.Generator().manual_seed(3))
    assert bool((out.base_nll[:, :4] == 0).all()) and bool((full.base_nll[:, :4] != 0).all())
    torch.testing.assert_close(out.base_nll[:, 4:], full.base_nll[:, 4:], rtol=0, atol=0)


def test_bad_labels_are_refused():
    quiet = _quietstar()
    ids = torch.randint(1, 95, (2, 9))
    with pytest.raises(ValueError, match=r"labels must be a \(2, 9\) tensor"):
        quiet(ids, labels=ids[:, 1:])
    with pytest.raises(ValueError, match="labels must be int64"):
        quiet(ids, labels=ids.float())
    with pytest.raises(ValueError, match=r"labels must be token ids in \[0, 97\)"):
        quiet(ids, labels=torch.full_like(ids, 97))


@pytest.mark.parametrize("tie", [True, False])
def test_save_and_load_give_back_the_same_model(tmp_path, tie):
    quiet = _quietstar(tie=tie, n_ahead=6, reinforce_temperature=2.0, sample_temperature=0.5)
    with torch.no_grad():
        quiet.start_embedding.add_(0.25)  # trained values, not the initialisation
        quiet.model.get_input_embeddings().weight[95:].normal_()
    quiet.save_pretrained(tmp_path)
    loaded = QuietStar.from_pretrained(tmp_path, kernel_impl="torch")
    assert loaded.quietstar_config == quiet.quietstar_config
    assert (loaded.start_token_id, loaded.end_token_id, loaded.init_token_id, loaded.pad_token_id) == (95, 96, 5, PAD)
    assert quiet.state_dict().keys() == loaded.state_dict().keys()
    for name, value in quiet.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0, msg=name)
    batch = right_padding_collator([_Texts()[i] for i in range(3)])
    assert torch.equal(_loss(loaded, batch), _loss(quiet, batch))
    saved = json.loads((tmp_path / "quietstar_config.json").read_text())
    assert saved["quietstar"]["n_ahead"] == 6 and saved["start_token_id"] == 95
    bf16 = QuietStar.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert bf16.model.dtype == torch.bfloat16 and bf16.start_embedding.dtype == torch.bfloat16


def test_loading_what_quietstar_did_not_save_is_refused(tmp_path):
    _quietstar().model.save_pretrained(tmp_path)  # a plain HF model directory
    with pytest.raises(FileNotFoundError, match="quietstar_config.json"):
        QuietStar.from_pretrained(tmp_path)


def test_saving_a_peft_model_is_refused(tmp_path):
    peft = pytest.importorskip("peft")
    quiet = _quietstar()
    lora = QuietStar(peft.get_peft_model(quiet.model, peft.LoraConfig(r=2, target_modules=["q_proj"])),
                     start_token_id=95, end_token_id=96, init_token_id=5)
    with pytest.raises(ValueError, match="merge_and_unload"):
        lora.save_pretrained(tmp_path)


def test_trainer_checkpoint_reloads_in_one_line_with_the_same_loss(tmp_path):
    quiet = _quietstar()
    before = {name: p.detach().clone() for name, p in quiet.named_parameters()}
    trainer = _trainer(quiet, tmp_path, max_steps=3, save_steps=3)
    trainer.train()
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 3 and all(torch.isfinite(torch.tensor(logged)))
    for name in ("start_embedding", "talk_head.0.0.weight", "model.model.layers.0.self_attn.q_proj.weight"):
        assert not torch.equal(dict(quiet.named_parameters())[name], before[name]), f"{name} was not trained"
    loaded = QuietStar.from_pretrained(tmp_path / "checkpoint-3", kernel_impl="torch")
    quiet.eval()
    batch = right_padding_collator([_Texts()[i] for i in range(4)])
    assert torch.equal(_loss(loaded, batch), _loss(quiet, batch))


class _StopAt(transformers.TrainerCallback):
    """An interruption: training of a 4-step schedule stops after ``step`` steps."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step == self.step


def test_trainer_resumes_from_a_checkpoint_exactly(tmp_path):
    straight = _quietstar()
    _trainer(straight, tmp_path / "straight", max_steps=4, save_steps=100).train()
    interrupted = _trainer(_quietstar(), tmp_path / "interrupted", max_steps=4, save_steps=2)
    interrupted.add_callback(_StopAt(2))
    interrupted.train()
    assert interrupted.state.global_step == 2
    resumed = _quietstar()
    with torch.no_grad():  # a different start, so that only the checkpoint can make it equal
        resumed.start_embedding.zero_()
    _trainer(resumed, tmp_path / "interrupted", max_steps=4, save_steps=100).train(
        resume_from_checkpoint=str(tmp_path / "interrupted" / "checkpoint-2"))
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_best_checkpoint_is_loaded_at_the_end(tmp_path):
    """load_best_model_at_end: the model ends equal to the checkpoint Trainer chose, not to the last step."""
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=4, save_steps=2, eval_steps=2,
                                          eval_strategy="steps", load_best_model_at_end=True,
                                          metric_for_best_model="loss", greater_is_better=False,
                                          per_device_train_batch_size=4, per_device_eval_batch_size=4,
                                          learning_rate=1e-3, seed=0, report_to=[], use_cpu=True, disable_tqdm=True,
                                          prediction_loss_only=True)
    quiet = _quietstar()
    trainer = QuietStarTrainer(model=quiet, args=args, train_dataset=_Texts(), eval_dataset=_Texts(),
                               data_collator=right_padding_collator)
    trainer.train()
    # Measured: the eval loss rises from step 2 to 4 (213 -> 271), so the best is not the last step.
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-2"), "the check needs a best that is not last"
    best = QuietStar.from_pretrained(trainer.state.best_model_checkpoint, kernel_impl="torch")
    for name, value in best.state_dict().items():
        torch.testing.assert_close(quiet.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_resuming_with_other_settings_or_a_peft_model_is_refused(tmp_path):
    from quietstar_fast.quietstar.saving import load_into

    _quietstar().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"other Quiet-STaR settings \(\['quietstar'\]\)"):
        load_into(_quietstar(n_ahead=6), tmp_path)
    peft = pytest.importorskip("peft")
    quiet = _quietstar()
    lora = QuietStar(peft.get_peft_model(quiet.model, peft.LoraConfig(r=2, target_modules=["q_proj"])),
                     start_token_id=95, end_token_id=96, init_token_id=5)
    with pytest.raises(ValueError, match="PEFT"):
        _trainer(lora, tmp_path / "lora", max_steps=1, save_steps=1)
