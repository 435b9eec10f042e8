"""GSM8K and CommonsenseQA examples from local files in the datasets' own formats, or from the Hub via ``datasets``."""
from __future__ import annotations

import json
from pathlib import Path

HUB_NAMES = {"gsm8k": ("gsm8k", "main", "test"), "commonsense_qa": ("tau/commonsense_qa", "default", "validation")}


def load_examples(dataset: str, path: str | Path | None = None, split: str | None = None,
                  limit: int | None = None) -> list[dict]:
    """Examples of ``dataset`` ("gsm8k" or "commonsense_qa") as dicts in the Hub dataset's fields.

    ``path``: a .jsonl/.json or .parquet file (GSM8K: ``question``, ``answer`` ending "#### N"; CommonsenseQA: the
    Hub's ``question``, ``choices`` {label, text}, ``answerKey``, or the original release's
    ``question`` {stem, choices [{label, text}]}, ``answerKey``). Without it, ``datasets.load_dataset`` on the split
    the official code evaluates (GSM8K test, CommonsenseQA validation) unless ``split`` is given.
    """
    if dataset not in HUB_NAMES:
        raise ValueError(f"dataset must be one of {sorted(HUB_NAMES)}, got {dataset!r}")
    rows = _read_file(Path(path)) if path is not None else _read_hub(dataset, split)
    examples = [_normalise(dataset, row, index) for index, row in enumerate(rows[:limit] if limit else rows)]
    if not examples:
        raise ValueError(f"no examples in {path or dataset}")
    return examples


def _read_file(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet
        except ImportError as error:
            raise ImportError("reading .parquet needs pyarrow (pip install pyarrow)") from error
        return pyarrow.parquet.read_table(path).to_pylist()
    text = path.read_text()
    if path.suffix == ".json" and text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _read_hub(dataset: str, split: str | None) -> list[dict]:
    try:
        import datasets
    except ImportError as error:
        raise ImportError(f"loading {dataset} from the Hub needs `pip install datasets`; or pass path= a local "
                          ".jsonl/.parquet file") from error
    name, config, default_split = HUB_NAMES[dataset]
    return list(datasets.load_dataset(name, config, split=split or default_split))


def _normalise(dataset: str, row: dict, index: int) -> dict:
    try:
        if dataset == "gsm8k":
            return {"question": row["question"], "answer": row["answer"]}
        question = row["question"]
        if isinstance(question, dict):  # the original CommonsenseQA release
            choices = question["choices"]
            return {"question": question["stem"], "answerKey": row["answerKey"],
                    "choices": {"label": [c["label"] for c in choices], "text": [c["text"] for c in choices]}}
        return {"question": question, "choices": row["choices"], "answerKey": row["answerKey"]}
    except (KeyError, TypeError) as error:
        raise ValueError(f"{dataset} example {index} lacks the field {error}: expected the dataset's own "
                         "format") from error
