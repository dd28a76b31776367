"""`graphsurg recover`: fine-tune or distill an edited model with torch, write it and its recovery record.

Runs as one process, or as N under `torchrun --nproc_per_node=N -m graphsurg recover ...` (only rank 0
writes). torch is imported only when the command runs, so graphsurg works without it.
"""

from __future__ import annotations

import json

import click


@click.command("recover")
@click.argument("student", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the recovered model.")
@click.option("--data", required=True, type=click.Path(exists=True),
              help="Training data (.npz or ONNX test-data folder).")
@click.option("--teacher", type=click.Path(dir_okay=False),
              help="Reference model to distill from (its outputs are the targets).")
@click.option("--labels", "labels", metavar="KEY", help="Train against the labels under KEY (a task loss).")
@click.option("--epochs", type=int, help="Passes over the training split (default 5).")
@click.option("--steps", type=int, help="Optimizer steps instead of epochs.")
@click.option("--lr", default=1e-3, show_default=True, help="AdamW learning rate (cosine-decayed to 0).")
@click.option("--batch-size", default=64, show_default=True, help="Global batch size (split across torchrun ranks).")
@click.option("--train", "train_mode", type=click.Choice(["all", "head", "touched"]), default="all", show_default=True,
              help="Which parameters train: all, the new head (needs --changes), or what passes touched (--changes).")
@click.option("--temperature", default=4.0, show_default=True, help="Distillation temperature T.")
@click.option("--alpha", default=0.5, show_default=True,
              help="With labels and a teacher: alpha*task + (1-alpha)*distill.")
@click.option("--val-split", default=0.1, show_default=True, help="Share of the data held out for validation.")
@click.option("--patience", default=3, show_default=True, help="Stop after this many epochs without improvement.")
@click.option("--keep", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Write the best validation epoch's weights, or the last epoch's.")
@click.option("--changes", type=click.Path(dir_okay=False), help="Change record from `graphsurg apply --changes`.")
@click.option("--seed", default=0, show_default=True, help="Seed for the split, shuffling and initialization.")
@click.option("--record", type=click.Path(dir_okay=False), help="Write the recovery record (JSON) here.")
@click.option("--weight-decay", default=0.0, show_default=True, help="AdamW weight decay.")
@click.option("--distill-loss", type=click.Choice(["auto", "kl", "mse"]), default="auto", show_default=True,
              help="Distillation loss per output: auto = KL for classifier outputs, MSE otherwise.")
@click.option("--bn", "bn_mode", type=click.Choice(["train", "frozen"]), default="train", show_default=True,
              help="BatchNormalization during training: batch statistics (and updated running ones) or frozen.")
@click.option("--learn-scales", is_flag=True, help="QAT: train quantization scales too (default: fixed).")
@click.option("--keep-zeros/--no-keep-zeros", default=True, show_default=True,
              help="Keep exact zeros of weight matrices at zero (pruning without a change record).")
@click.option("--teacher-backend", type=click.Choice(["onnxruntime", "torch"]), default="onnxruntime",
              show_default=True, help="What computes the teacher's outputs.")
@click.option("--provider", default="cpu", show_default=True,
              help="onnxruntime provider for the teacher: cpu|cuda|auto.")
@click.option("--device", default="auto", show_default=True, help="torch device: auto|cpu|cuda.")
@click.option("--threads", type=int, help="torch CPU threads (default: torch's choice; torchrun sets 1 per rank).")
@click.option("--quiet", is_flag=True, help="No progress bar or per-epoch lines.")
def command(student: str, output: str, data: str, teacher: str | None, labels: str | None, epochs: int | None,
            steps: int | None, lr: float, batch_size: int, train_mode: str, temperature: float, alpha: float,
            val_split: float, patience: int, keep: str, changes: str | None, seed: int, record: str | None,
            weight_decay: float, distill_loss: str, bn_mode: str, learn_scales: bool, keep_zeros: bool,
            teacher_backend: str, provider: str, device: str, threads: int | None, quiet: bool) -> None:
    """Recover STUDENT's accuracy by fine-tuning (--labels) and/or distillation (--teacher)."""
    from graphsurg.train import require_torch

    torch = require_torch()
    from graphsurg import serde
    from graphsurg.train import distributed
    from graphsurg.train.data import load_arrays
    from graphsurg.train.masks import load_changes
    from graphsurg.train.recover import RecoverOptions, recover

    if threads:
        torch.set_num_threads(threads)
    options = RecoverOptions(
        epochs=epochs, steps=steps, lr=lr, batch_size=batch_size, train=train_mode, temperature=temperature,
        alpha=alpha, val_split=val_split, seed=seed, patience=patience, keep=keep, weight_decay=weight_decay,
        use_labels=labels is not None, distill_loss=distill_loss, bn_mode=bn_mode, learn_scales=learn_scales,
        keep_zeros=keep_zeros, teacher_backend=teacher_backend, provider=provider, device=device,
        progress=not quiet)
    placement = distributed.setup(device)
    try:
        model = serde.load(student)
        reference = serde.load(teacher) if teacher else None
        arrays = load_arrays(data, model, labels or "labels")
        info = load_changes(changes) if changes else None
        echo = (lambda line: click.echo(line, err=True)) if placement.is_main and not quiet else None
        result = recover(model, arrays, reference, options, info, report=echo, placement=placement)
        if placement.is_main:
            _write(model, output, record, result, student=student, teacher=teacher, data=data, changes=changes)
    finally:
        distributed.teardown(placement)


def _write(model, output: str, record: str | None, result: dict, **paths) -> None:
    from graphsurg import serde
    from graphsurg.errors import PassError
    from graphsurg.fsutil import write_text
    from graphsurg.serde.check import CheckError

    try:
        serde.check(model, full=True)
    except CheckError as exc:
        raise PassError(f"the recovered model fails onnx's checker: {exc}") from None
    serde.save(model, output)
    if record:
        result = {**result, "paths": {**paths, "output": output}}
        write_text(record, json.dumps(result, indent=2, sort_keys=True, default=_plain) + "\n")
    best = result["best"]
    click.echo(f"recover: kept epoch {best['epoch']} (n_tune={best['n_tune']}); wrote {output}", err=True)


def _plain(value):
    """JSON for numpy scalars and NaN-free floats."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
