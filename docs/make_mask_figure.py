"""Draws docs/mask.png from the mask definition itself (quietstar_fast.mask.ThoughtMaskLayout.dense_allowed).

    .venv/bin/python docs/make_mask_figure.py
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from quietstar_fast import ThoughtMaskLayout  # noqa: E402

N, STEPS = 6, 3  # prefix length n and stream steps a; every step's queries are drawn (m = a + 1)


def _panel(ax, layout: ThoughtMaskLayout, title: str) -> None:
    allowed = layout.dense_allowed()[0, 0].numpy()
    n = layout.prefix_len
    kind = np.zeros(allowed.shape)  # 0 masked, 1 prefix key, 2 own stream key
    kind[:, :n][allowed[:, :n]] = 1
    kind[:, n:][allowed[:, n:]] = 2
    colors = matplotlib.colors.ListedColormap(["#f4f4f4", "#4c72b0", "#dd8452"])
    ax.imshow(kind, cmap=colors, vmin=0, vmax=2, interpolation="nearest")
    for edge in range(n, allowed.shape[1], n):
        ax.axvline(edge - 0.5, color="black", linewidth=1)
    for edge in range(n, allowed.shape[0], n):
        ax.axhline(edge - 0.5, color="black", linewidth=1)
    ax.set_xticks([n * s + (n - 1) / 2 for s in range(layout.num_stream_steps + 1)],
                  ["prefix"] + [f"step {s}" for s in range(1, layout.num_stream_steps + 1)])
    ax.set_yticks([n * r + (n - 1) / 2 for r in range(layout.num_query_steps)],
                  [f"queries\nstep {r}" for r in range(layout.first_query_step, layout.num_stream_steps + 1)])
    ax.set_xlabel("keys (the official KV cache layout)")
    ax.set_title(title, fontsize=10)


def main() -> None:
    padding = torch.ones(1, N, dtype=torch.bool)
    padding[0, -2:] = False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    _panel(axes[0], ThoughtMaskLayout(N, STEPS, STEPS + 1), f"n={N}, a={STEPS}: causal prefix + own stream keys")
    _panel(axes[1], ThoughtMaskLayout(N, STEPS, STEPS + 1, padding, sliding_window=3),
           "positions 4, 5 padded; sliding window W=3")
    handles = [matplotlib.patches.Patch(color=c, label=label) for c, label in
               (("#4c72b0", "prefix key j <= i (real, i - j < W)"), ("#dd8452", "own stream key (s, i), s <= step"),
                ("#f4f4f4", "masked"))]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    out = Path(__file__).with_name("mask.png")
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
