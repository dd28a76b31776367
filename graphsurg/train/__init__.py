"""The torch backend: the IR as a `torch.nn.Module`, recovery (fine-tuning, distillation, QAT) and
the gradients service. torch is imported only below this package, and only by modules that need it;
`require_torch` turns its absence into an error users can act on.
"""

from __future__ import annotations

from graphsurg.errors import BadInputError

INSTALL_HINT = "install the train extra: pip install 'graphsurg[train]'"


def require_torch():
    """Returns the torch module, or raises BadInputError saying how to get it."""
    try:
        import torch
    except ImportError:
        raise BadInputError(f"this needs torch, which is not installed; {INSTALL_HINT}") from None
    return torch
