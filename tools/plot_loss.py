#!/usr/bin/env python3
"""Plots loss curves from CSV logs: plot_loss.py LOG.csv [LOG2.csv ...] OUT.png [--labels a,b,...].

Each log has columns step,train_loss,val_loss,... (examples/train.cpp writes them); the training loss
is drawn as a line, the validation loss as markers, one colour per log."""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(path):
    steps, train, val_steps, val = [], [], [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("train_loss"):
                steps.append(int(row["step"]))
                train.append(float(row["train_loss"]))
            if row.get("val_loss"):
                val_steps.append(int(row["step"]))
                val.append(float(row["val_loss"]))
    return steps, train, val_steps, val


def main(argv):
    labels = None
    if "--labels" in argv:
        i = argv.index("--labels")
        labels = argv[i + 1].split(",")
        argv = argv[:i] + argv[i + 2:]
    if len(argv) < 2:
        sys.exit(__doc__)
    logs, out = argv[:-1], argv[-1]
    fig, ax = plt.subplots(figsize=(7, 4))
    for n, path in enumerate(logs):
        steps, train, val_steps, val = read(path)
        name = labels[n] if labels and n < len(labels) else path
        line, = ax.plot(steps, train, linewidth=1, label=f"{name} (train)")
        if val:
            ax.plot(val_steps, val, "o", color=line.get_color(), label=f"{name} (validation)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1:])
