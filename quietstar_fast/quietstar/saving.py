"""Saving and loading a ``QuietStar`` in one directory: the base model as transformers saves it (config, weights with
the grown vocabulary, generation config), the Quiet-STaR parameters (meta embeddings, mixing head) in
``quietstar.safetensors`` and the Quiet-STaR settings (``QuietStarConfig`` and the token ids) in
``quietstar_config.json``."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import QuietStarConfig

WEIGHTS_NAME = "quietstar.safetensors"
CONFIG_NAME = "quietstar_config.json"
OWN_PREFIXES = ("start_embedding", "end_embedding", "talk_head.")
TOKEN_ID_FIELDS = ("start_token_id", "end_token_id", "init_token_id", "pad_token_id")


def own_state_dict(quiet: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters Quiet-STaR adds to the base model, under the official code's names."""
    return {name: p.detach().contiguous() for name, p in quiet.named_parameters() if name.startswith(OWN_PREFIXES)}


def is_peft_model(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def _settings(quiet) -> dict:
    """What ``quietstar_config.json`` holds: the ``QuietStarConfig`` fields and the token ids."""
    return {"quietstar": dataclasses.asdict(quiet.quietstar_config),
            **{field: getattr(quiet, field) for field in TOKEN_ID_FIELDS}}


def save_quietstar(quiet, directory: str | os.PathLike, **save_kwargs) -> None:
    if is_peft_model(quiet.model):
        raise ValueError("save_pretrained of a PEFT-wrapped model would save the adapters without the grown "
                         "vocabulary rows of the thought delimiters; merge the adapters first "
                         "(quiet.model = quiet.model.merge_and_unload()), or keep quiet.trainable_state_dict() "
                         "next to the base model")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    quiet.model.save_pretrained(directory, **save_kwargs)
    save_file(own_state_dict(quiet), directory / WEIGHTS_NAME, metadata={"format": "pt"})
    (directory / CONFIG_NAME).write_text(json.dumps(_settings(quiet), indent=2) + "\n")


def _read_settings(directory: Path) -> dict:
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} holds no {name}: it was not written by QuietStar.save_pretrained")
    settings = json.loads((directory / CONFIG_NAME).read_text())
    unknown = set(settings["quietstar"]) - {field.name for field in dataclasses.fields(QuietStarConfig)}
    if unknown:
        raise ValueError(f"{directory / CONFIG_NAME} has settings this version does not know: {sorted(unknown)}")
    return settings


def _copy_into(parameters: dict[str, torch.Tensor], saved: dict[str, torch.Tensor], source: Path) -> None:
    unexpected = sorted(set(saved) - set(parameters))
    if unexpected:
        raise ValueError(f"{source} holds tensors this model does not have: {unexpected[:5]}")
    with torch.no_grad():
        for name, value in saved.items():
            parameters[name].copy_(value)


def _load_own(quiet, directory: Path) -> None:
    saved = load_file(directory / WEIGHTS_NAME, device=str(quiet.start_embedding.device))
    missing = sorted(set(own_state_dict(quiet)) - set(saved))
    if missing:
        raise ValueError(f"{directory / WEIGHTS_NAME} lacks {missing}")
    _copy_into(dict(quiet.named_parameters()), saved, directory / WEIGHTS_NAME)


def load_quietstar(cls, directory: str | os.PathLike, *, impl: str, kernel_impl: str,
                   activation_checkpointing: str | None, **model_kwargs):
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    settings = _read_settings(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, **model_kwargs)
    quiet = cls(model, impl=impl, kernel_impl=kernel_impl, activation_checkpointing=activation_checkpointing,
                **{field: settings[field] for field in TOKEN_ID_FIELDS}, **settings["quietstar"])
    _load_own(quiet, directory)
    return quiet


def load_into(quiet, directory: str | os.PathLike) -> None:
    """Load a ``save_pretrained`` directory into an existing ``QuietStar`` of the same settings, shard by shard, in
    place (resuming a run: no second model is built). Tied weights are saved once and loaded through their twin."""
    directory = Path(directory)
    settings = _read_settings(directory)
    running = _settings(quiet)
    if settings != running:
        differing = sorted(key for key in running if settings.get(key) != running[key])
        raise ValueError(f"{directory} was saved with other Quiet-STaR settings ({differing}): saved {settings}, "
                         f"running {running}")
    index = directory / "model.safetensors.index.json"
    shards = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file()
              else ["model.safetensors"])
    parameters = dict(quiet.model.state_dict(keep_vars=True))
    loaded = set()
    for shard in shards:
        saved = load_file(directory / shard, device=str(quiet.start_embedding.device))
        _copy_into(parameters, saved, directory / shard)
        loaded |= set(saved)
    pointers = {parameters[name].data_ptr() for name in loaded}
    missing = sorted(name for name in set(parameters) - loaded if parameters[name].data_ptr() not in pointers)
    if missing:
        raise ValueError(f"{directory} lacks weights of the model: {missing[:5]}")
    _load_own(quiet, directory)
