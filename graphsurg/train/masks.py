"""What a change record tells recovery: which parameters passes touched or created, and the pruning
masks that must keep pruned weights at zero while the rest trains.

The record is the JSON `graphsurg apply --changes` writes, `{"passes": [{"touched": [...],
"new_parameters": [...], "arrays": [...]}, ...]}`, with array records in the sibling `.npz` under
`"<pass index>/<array key>"`; masks are the keys `"<i>/mask/<initializer name>"` (nonzero = kept).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from graphsurg.errors import BadInputError

MASK_PREFIX = "mask/"
log = logging.getLogger(__name__)


@dataclass
class ChangeInfo:
    touched: list[str] = field(default_factory=list)
    new_parameters: list[str] = field(default_factory=list)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ""


def load_changes(path: str | Path) -> ChangeInfo:
    """Reads a change record (and its masks). A missing or malformed file is a BadInputError."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
        passes = record["passes"]
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such change record") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BadInputError(f"{path}: not a change record (expected {{\"passes\": [...]}}): {exc}") from None
    info = ChangeInfo(source=str(path))
    for entry in passes:
        info.touched += [n for n in entry.get("touched", []) if n not in info.touched]
        info.new_parameters += [n for n in entry.get("new_parameters", []) if n not in info.new_parameters]
    info.masks = _masks(path.with_suffix(".npz"), passes)
    return info


def _masks(path: Path, passes: list[dict]) -> dict[str, np.ndarray]:
    wanted = [f"{i}/{key}" for i, entry in enumerate(passes) for key in entry.get("arrays", [])
              if key.startswith(MASK_PREFIX)]
    if not wanted:
        return {}
    if not path.is_file():
        raise BadInputError(f"{path}: the change record lists masks but their .npz is missing")
    masks: dict[str, np.ndarray] = {}
    with np.load(path) as arrays:
        for key in wanted:
            if key not in arrays:
                raise BadInputError(f"{path}: no array {key!r}, which the change record lists")
            name = key.split("/", 1)[1][len(MASK_PREFIX):]
            kept = arrays[key] != 0
            # A later pass prunes more: an entry stays only where every pass kept it.
            masks[name] = kept & masks[name] if name in masks else kept
    return masks


class MaskSet:
    """Masks applied to parameters after every optimizer step (pruned entries stay exactly zero)."""

    def __init__(self, pairs: list[tuple[str, torch.nn.Parameter, torch.Tensor]]):
        self.pairs = pairs

    @classmethod
    def build(cls, module, trainable: list[str], changes: ChangeInfo | None, keep_zeros: bool) -> MaskSet:
        """Masks from the change record, plus (with `keep_zeros`) exact zeros of trainable weights of
        rank >= 2 that the record does not cover. Biases and norm parameters (rank < 2) never get
        zero masks: a zero there is an initial value, not a pruning decision."""
        recorded = changes.masks if changes else {}
        unknown = sorted(set(recorded) - set(module.parameter_names()))
        if unknown:
            log.warning("masks in %s name no trainable parameter of the model: %s", changes.source,
                        ", ".join(unknown[:5]))
        pairs = []
        for name in trainable:
            param = module.parameter(name)
            if name in recorded:
                mask = _fit(name, recorded[name], param)
            elif keep_zeros and param.dim() >= 2 and bool((param == 0).any()):
                mask = param.detach() != 0
            else:
                continue
            pairs.append((name, param, mask.to(param.device, param.dtype)))
        return cls(pairs)

    @torch.no_grad()
    def apply(self) -> None:
        for _, param, mask in self.pairs:
            param.mul_(mask)

    def sparsity(self) -> dict[str, float]:
        """Fraction of exact zeros in each masked parameter (the record shows they hold)."""
        return {name: float((param == 0).float().mean()) for name, param, _ in self.pairs}


def _fit(name: str, mask: np.ndarray, param: torch.Tensor) -> torch.Tensor:
    tensor = torch.from_numpy(np.asarray(mask))
    try:
        return torch.broadcast_to(tensor, param.shape)
    except RuntimeError:
        raise BadInputError(f"the mask for {name!r} has shape {list(mask.shape)}, which does not fit the "
                            f"parameter's {list(param.shape)}; was the change record made for this model?") from None
