"""What the example training loop reports: a tqdm progress bar with loss and tokens/s, a CSV log, and TensorBoard
scalars when ``tensorboard`` is installed."""
from __future__ import annotations

import csv
import time
from pathlib import Path

from tqdm.auto import tqdm

COLUMNS = ("step", "loss", "nll_loss", "policy_loss", "grad_norm", "tokens_per_s")


def tensorboard_available() -> bool:
    try:
        import torch.utils.tensorboard  # noqa: F401  (raises ImportError without the tensorboard package)
    except ImportError:
        return False
    return True


class TrainingLog:
    """Per-step records to ``<out>/log.csv`` (appended when resuming), TensorBoard under ``<out>/tensorboard``, and a
    progress bar; only the writing rank (``enabled``) shows or writes anything."""

    def __init__(self, out: Path, total_steps: int, first_step: int, enabled: bool = True):
        self.enabled = enabled
        self._last_time, self._tokens = time.perf_counter(), 0
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        path = out / "log.csv"
        kept = []
        if first_step > 0 and path.exists():  # resuming: drop rows logged after the checkpoint (a crash's tail)
            with open(path, newline="") as handle:
                kept = [row for row in csv.DictReader(handle) if int(row["step"]) <= first_step]
        self._file = open(path, "w", newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=COLUMNS)
        self._csv.writeheader()
        self._csv.writerows(kept)
        self._board = None
        if tensorboard_available():
            from torch.utils.tensorboard import SummaryWriter

            self._board = SummaryWriter(str(out / "tensorboard"))
        self._bar = tqdm(total=total_steps, initial=first_step, unit="step", dynamic_ncols=True)

    def record(self, record: dict, tokens: int) -> dict:
        """Add tokens/s (real tokens since the previous record) to ``record`` and report it."""
        now = time.perf_counter()
        self._tokens += tokens
        record = {**record, "tokens_per_s": self._tokens / max(now - self._last_time, 1e-9)}
        self._last_time, self._tokens = now, 0
        if self.enabled:
            self._csv.writerow(record)
            self._file.flush()
            if self._board is not None:
                for name in COLUMNS[1:]:
                    self._board.add_scalar(f"train/{name}", record[name], record["step"])
            self._bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
            self._bar.update(1)
        return record

    def close(self) -> None:
        if self.enabled:
            self._bar.close()
            self._file.close()
            if self._board is not None:
                self._board.close()
