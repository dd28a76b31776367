"""Recovery: fine-tune (or distill into) an edited ONNX model with torch and write the weights back.

`recover(student, data, teacher=..., options=...)` trains the student's IR through `GraphModule` with
a task loss, distillation from a teacher, or both; seeded and deterministic on CPU; early stopping
on a validation split keeps the best epoch; under torchrun it runs DistributedDataParallel with the
data sharded per rank. It returns the recovery record (see README "Recovery" for the schema).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from graphsurg.errors import BadInputError, UsageError
from graphsurg.ir import Model
from graphsurg.train import distributed
from graphsurg.train.data import Arrays, split
from graphsurg.train.interpreter import GraphModule
from graphsurg.train.losses import Objective, build_objective
from graphsurg.train.masks import ChangeInfo, MaskSet
from graphsurg.train.teacher import pair_outputs, teacher_outputs
from graphsurg.train.validate import validate

log = logging.getLogger(__name__)

SCHEMA = "graphsurg-recovery/1"
TRAIN_MODES = ("all", "head", "touched")


@dataclass
class RecoverOptions:
    epochs: int | None = None  # default 5 when steps is not given either
    steps: int | None = None
    lr: float = 1e-3
    batch_size: int = 64  # global: split evenly across ranks under torchrun
    train: str = "all"
    temperature: float = 4.0
    alpha: float = 0.5
    val_split: float = 0.1
    seed: int = 0
    patience: int = 3
    keep: str = "best"  # "best": the best validation epoch's weights; "last": the final ones
    weight_decay: float = 0.0
    use_labels: bool = False
    distill_loss: str = "auto"
    bn_mode: str = "train"
    learn_scales: bool = False
    keep_zeros: bool = True
    teacher_backend: str = "onnxruntime"  # or "torch"
    provider: str = "cpu"
    device: str = "auto"
    progress: bool = True


@dataclass
class Trainer:
    """The state of one recovery run (module, optimizer, masks, record) while it trains."""

    module: GraphModule
    wrapped: torch.nn.Module
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: Any
    masks: MaskSet
    placement: distributed.Placement
    total_steps: int
    started: float = field(default_factory=time.perf_counter)
    history: list[dict] = field(default_factory=list)
    step: int = 0
    n_tune: int = 0


def recover(student: Model, data: Arrays, teacher: Model | None = None, options: RecoverOptions | None = None,
            changes: ChangeInfo | None = None, report: Callable[[str], None] | None = None,
            placement: distributed.Placement | None = None) -> dict[str, Any]:
    """Trains `student` in place (its initializers are replaced by the trained values) and returns the
    recovery record. `data` holds the training inputs (and labels); a `val_split` share is held out.
    `placement` comes from `distributed.setup` (the caller then tears the process group down);
    without it the run joins torchrun's group itself, or runs as one process."""
    options = options or RecoverOptions()
    _check_options(options, data, teacher)
    _check_batch_axis(student)
    placement = placement or distributed.setup(options.device)
    torch.manual_seed(options.seed)
    with _deterministic(placement):
        train_data, val_data = split(data, options.val_split, options.seed)
        targets = _teacher_targets(teacher, student, train_data, val_data, options)
        trainer = _make_trainer(student, train_data, targets, options, changes, placement)
        record = _run(trainer, train_data, val_data, targets, options, report or (lambda line: None))
    trainer.module.write_back()
    record.update(_describe(trainer, options, data, train_data, val_data))
    if val_data is not None and placement.is_main:
        record["exported_val"] = _measure_export(student, teacher, val_data)
    return record


def _measure_export(student: Model, teacher: Model | None, val_data: Arrays) -> dict[str, Any]:
    """The written model measured by onnxruntime on the validation split: proves the export runs
    and gives the certificate numbers from the deployed runtime rather than from torch."""
    from graphsurg.eval import ArrayDataset, evaluate, signature

    dataset = ArrayDataset(val_data.inputs, signature(student), val_data.labels, source="validation split")
    metrics = evaluate(student, dataset, ref=teacher)["metrics"]
    return {key: metrics.get(key) for key in ("loss", "accuracy", "agreement", "kl", "sqnr_db")}


def _check_options(options: RecoverOptions, data: Arrays, teacher: Model | None) -> None:
    if options.keep not in ("best", "last"):
        raise UsageError(f"--keep {options.keep!r}: choose best or last")
    if options.train not in TRAIN_MODES:
        raise UsageError(f"--train {options.train!r}: choose one of {', '.join(TRAIN_MODES)}")
    if options.epochs is not None and options.steps is not None:
        raise UsageError("give --epochs or --steps, not both")
    if (options.epochs is not None and options.epochs < 1) or (options.steps is not None and options.steps < 1):
        raise UsageError("--epochs and --steps must be at least 1")
    if options.lr <= 0 or options.batch_size < 1:
        raise UsageError("--lr must be positive and --batch-size at least 1")
    if options.use_labels and data.labels is None:
        raise BadInputError("--labels: the data has no labels array under that key")
    if teacher is None and not options.use_labels:
        raise UsageError("recovery needs a teacher (--teacher) for distillation or labels (--labels) for a task loss")


@contextlib.contextmanager
def _deterministic(placement: distributed.Placement):
    """Deterministic kernels on GPU for the run (the setting is restored). On CPU the seeded run is
    reproducible as it is: torch's CPU kernels used here are deterministic, and switching the global
    flag would import torch's compiler stack (seconds) for nothing."""
    if placement.device.type != "cuda":
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _teacher_targets(teacher, student, train_data, val_data, options):
    """The teacher's outputs for the train and validation samples, paired with the student's outputs."""
    if teacher is None:
        return None
    names = [v.name for v in student.graph.outputs]
    parts = {}
    for key, arrays in (("train", train_data), ("val", val_data)):
        if arrays is None:
            continue
        outputs, teacher_names = teacher_outputs(teacher, arrays, options.teacher_backend, options.provider)
        parts[key] = pair_outputs(names, teacher_names, outputs)
    return parts


def _check_batch_axis(student: Model) -> None:
    """Recovery batches samples along axis 0, so that axis must be dynamic in the student."""
    from graphsurg.eval.data import fixed_batch, signature

    fixed = fixed_batch(signature(student).inputs)
    if fixed is not None:
        raise UsageError(f"the student fixes its batch dimension at {fixed}; recovery needs a dynamic batch axis "
                         "(re-export it with a symbolic first dimension, e.g. torch.onnx.export dynamic_axes)")


def _make_trainer(student, train_data, targets, options, changes, placement) -> Trainer:
    module = GraphModule(student, bn_mode=options.bn_mode, learn_scales=options.learn_scales).to(placement.device)
    objective = _objective(module, train_data, targets, options, placement)
    trainable = _select(module, options.train, changes)
    masks = MaskSet.build(module, trainable, changes, options.keep_zeros)
    masks.apply()
    params = [module.parameter(name) for name in trainable]
    wrapped = distributed.wrap(module, placement)
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
    total = _total_steps(train_data.samples, options, placement)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total)
                                                                                           / total)))
    return Trainer(module, wrapped, objective, optimizer, scheduler, masks, placement, total)


def _objective(module, train_data, targets, options, placement) -> Objective:
    """Builds the loss from one probe batch of the student's outputs (eval mode, no gradients)."""
    probe = train_data.take(np.arange(min(train_data.samples, 8)))
    module.eval()
    with torch.no_grad():
        outputs = [o.cpu().numpy() for o in module(*_feeds(module, probe.inputs, placement.device))]
    labels = probe.labels if options.use_labels else None
    teacher = [t[:len(outputs[0])] for t in targets["train"]] if targets else None
    return build_objective(module.output_names, outputs, labels, teacher, options.temperature, options.alpha,
                           options.distill_loss)


def _select(module: GraphModule, mode: str, changes: ChangeInfo | None) -> list[str]:
    """The initializer names that train; everything else is frozen (requires_grad False)."""
    available = module.parameter_names()
    if mode == "all":
        chosen = list(available)
    else:
        if changes is None:
            raise UsageError(f"--train {mode} needs the change record of the passes (--changes CHANGES.json)")
        wanted = changes.new_parameters if mode == "head" else changes.touched
        chosen = [name for name in wanted if name in available]
        if not chosen:
            listed = ", ".join(wanted[:8]) or "none"
            raise UsageError(f"--train {mode}: the change record names no trainable parameter of the student "
                             f"(it lists: {listed})")
    for name in available:
        module.parameter(name).requires_grad_(name in chosen)
    return chosen


def _total_steps(samples: int, options: RecoverOptions, placement) -> int:
    if options.batch_size % placement.world:
        raise UsageError(f"--batch-size {options.batch_size} must divide evenly across {placement.world} ranks")
    if options.steps is not None:
        return options.steps
    return (options.epochs or 5) * steps_per_epoch(samples, options.batch_size)


def steps_per_epoch(samples: int, batch_size: int) -> int:
    # Only full batches: every step then has the same global batch (and DDP the same per-rank share).
    return max(samples // batch_size, 1)


def epoch_batches(samples: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The epoch's global batches: a seeded permutation cut into full batches (a set smaller than one
    batch trains as one batch)."""
    order = np.random.default_rng([seed, epoch]).permutation(samples)
    if samples < batch_size:
        return [order]
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(samples // batch_size)]


def _feeds(module: GraphModule, inputs: dict[str, np.ndarray], device) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(inputs[name])).to(device) for name in module.input_names]


def _run(trainer: Trainer, train_data, val_data, targets, options, report) -> dict:
    """Validates, trains epoch by epoch with early stopping, and restores the best epoch's weights."""
    from graphsurg.eval.progress import Progress

    best = {"epoch": 0, "objective": math.inf, "state": None}
    record: dict[str, Any] = {"stopped_early": False}
    _checkpoint(trainer, val_data, targets, options, 0, None, best, report)
    waited, epoch = 0, 0
    show = options.progress and trainer.placement.is_main
    with Progress(trainer.total_steps, "recover", enabled=show) as bar:
        while trainer.step < trainer.total_steps:
            epoch += 1
            train_loss = _train_epoch(trainer, train_data, targets, options, epoch, bar)
            improved = _checkpoint(trainer, val_data, targets, options, epoch, train_loss, best, report)
            waited = 0 if improved else waited + 1
            if val_data is not None and waited >= options.patience and trainer.step < trainer.total_steps:
                record["stopped_early"] = True
                break
    keep_best = val_data is not None and options.keep == "best"
    if keep_best and best["state"] is not None:
        trainer.module.load_state_dict(best["state"])
    record.update(history=trainer.history, best={k: v for k, v in best.items() if k != "state"},
                  kept="best epoch" if keep_best else "last epoch")
    record["best"]["n_tune"] = trainer.history[best["epoch"]]["n_tune"]
    return record


def _train_epoch(trainer: Trainer, train_data, targets, options, epoch: int, bar) -> float:
    trainer.wrapped.train()
    losses = []
    placement = trainer.placement
    for batch in epoch_batches(train_data.samples, options.batch_size, options.seed, epoch):
        if trainer.step >= trainer.total_steps:
            break
        share = distributed.rank_share(batch, placement) if len(batch) >= placement.world else batch
        part = train_data.take(share)
        outputs = trainer.wrapped(*_feeds(trainer.module, part.inputs, placement.device))
        labels = torch.from_numpy(part.labels).to(placement.device) if options.use_labels else None
        teacher = [torch.from_numpy(t[share]).to(placement.device) for t in targets["train"]] if targets else None
        loss = trainer.objective(outputs, labels, teacher)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()
        trainer.scheduler.step()
        trainer.masks.apply()
        trainer.step += 1
        trainer.n_tune += len(batch)
        losses.append(float(loss.detach()))
        bar.advance()
    return float(np.mean(losses)) if losses else None


def _checkpoint(trainer, val_data, targets, options, epoch, train_loss, best, report) -> bool:
    """Measures on the validation split, appends to the history and keeps the best state."""
    metrics = validate(trainer.module, trainer.objective, val_data, targets["val"] if targets else None,
                       options, trainer.placement) if val_data is not None else None
    entry = {"epoch": epoch, "step": trainer.step, "n_tune": trainer.n_tune, "train_loss": train_loss,
             "lr": trainer.optimizer.param_groups[0]["lr"], "val": metrics,
             "elapsed_s": round(time.perf_counter() - trainer.started, 3)}
    trainer.history.append(entry)
    objective = metrics["objective"] if metrics else -epoch  # without validation the last epoch wins
    improved = objective < best["objective"]
    if improved:
        best.update(epoch=epoch, objective=objective)
        if val_data is not None and options.keep == "best":
            best["state"] = copy.deepcopy(trainer.module.state_dict())
    report(_summary(entry, options))
    return improved


def _summary(entry: dict, options: RecoverOptions) -> str:
    label = "before" if entry["epoch"] == 0 else f"epoch {entry['epoch']}"
    parts = [f"{label}: n_tune={entry['n_tune']}"]
    if entry["train_loss"] is not None:
        parts.append(f"train_loss={entry['train_loss']:.4f}")
    for key in ("objective", "accuracy", "agreement", "kl", "mse"):
        value = (entry["val"] or {}).get(key)
        if value is not None:
            parts.append(f"val_{key}={value:.4f}")
    return " ".join(parts)


def _describe(trainer: Trainer, options: RecoverOptions, data: Arrays, train_data, val_data) -> dict:
    module = trainer.module
    trainable = [n for n in module.parameter_names() if module.parameter(n).requires_grad]
    return {
        "schema": SCHEMA,
        "objective": trainer.objective.describe(),
        "train": options.train,
        "trainable": trainable,
        "trainable_parameters": int(sum(module.parameter(n).numel() for n in trainable)),
        "n_tune": trainer.n_tune,
        "steps": trainer.step,
        "samples": {"total": data.samples, "train": train_data.samples,
                    "val": 0 if val_data is None else val_data.samples},
        "masks": trainer.masks.sparsity(),
        "fake_quant": {"quantize_ops": sum(op.op_type == "QuantizeLinear" for op in module.model.graph.iter_all_ops()),
                       "shadow_weights": sorted(module.shadows)},
        "world_size": trainer.placement.world,
        "device": str(trainer.placement.device),
        "options": {k: v for k, v in asdict(options).items() if k != "progress"},
    }
