"""If, Loop and Scan. Their bodies run as frozen regions: forward only, under no_grad, with their
own initializers as buffers; gradients stop at the region's outputs. Values a body reads from an
enclosing scope arrive as extra trailing arguments (`node.captures` names them)."""

from __future__ import annotations

import torch

from graphsurg.train.ops import Node, register


class Body:
    """A compiled body plus the positions of the values it captures among the op's captures."""

    def __init__(self, node: Node, graph):
        self.program = node.host.compile_body(graph)
        self.picks = [node.captures.index(name) for name in self.program.captured_names]

    def __call__(self, inputs, captured):
        return self.program.run(list(inputs), [captured[i] for i in self.picks])


def _split(node: Node, args):
    return args[:node.num_inputs], args[node.num_inputs:]


@register("If")
def _if(node: Node):
    then_body, else_body = Body(node, node.attr("then_branch")), Body(node, node.attr("else_branch"))

    def run_if(*args):
        (cond,), captured = _split(node, args)
        with torch.no_grad():
            outputs = (then_body if bool(cond.reshape(-1)[0]) else else_body)([], captured)
        return tuple(outputs)
    return run_if


@register("Loop")
def _loop(node: Node):
    body = Body(node, node.attr("body"))
    n_carried = node.num_inputs - 2

    def run_loop(*args):
        (trip, cond, *carried), captured = _split(node, args)
        limit = int(trip.reshape(-1)[0]) if trip is not None else None
        keep = bool(cond.reshape(-1)[0]) if cond is not None else True
        scans: list[list[torch.Tensor]] = []
        i = 0
        with torch.no_grad():
            while keep and (limit is None or i < limit):
                outs = body([torch.tensor(i, dtype=torch.int64), torch.tensor(keep), *carried], captured)
                keep, carried = bool(outs[0].reshape(-1)[0]), list(outs[1:1 + n_carried])
                scans = scans or [[] for _ in outs[1 + n_carried:]]
                for acc, out in zip(scans, outs[1 + n_carried:], strict=False):
                    acc.append(out)
                i += 1
        n_scan = node.num_outputs - n_carried
        stacked = [torch.stack(acc) for acc in scans] or [torch.empty(0) for _ in range(n_scan)]
        return tuple(carried) + tuple(stacked)
    return run_loop


@register("Scan")
def _scan(node: Node):
    if node.opset < 9:
        raise node.fail("Scan before opset 9 (with a batch axis) is not supported")
    body = Body(node, node.attr("body"))
    n_scan_in = node.attr("num_scan_inputs")
    n_state = node.num_inputs - n_scan_in
    in_dirs = node.attr("scan_input_directions") or [0] * n_scan_in
    in_axes = node.attr("scan_input_axes") or [0] * n_scan_in

    def run_scan(*args):
        explicit, captured = _split(node, args)
        state, sequences = list(explicit[:n_state]), list(explicit[n_state:])
        sequences = [s.movedim(a % s.dim(), 0).flip(0) if d else s.movedim(a % s.dim(), 0)
                     for s, a, d in zip(sequences, in_axes, in_dirs, strict=False)]
        steps = sequences[0].shape[0] if sequences else 0
        collected: list[list[torch.Tensor]] = []
        with torch.no_grad():
            for t in range(steps):
                outs = body([*state, *(s[t] for s in sequences)], captured)
                state = list(outs[:n_state])
                collected = collected or [[] for _ in outs[n_state:]]
                for acc, out in zip(collected, outs[n_state:], strict=False):
                    acc.append(out)
        return tuple(state) + tuple(_scan_outputs(node, collected))
    return run_scan


def _scan_outputs(node: Node, collected):
    n_out = len(collected)
    out_dirs = node.attr("scan_output_directions") or [0] * n_out
    out_axes = node.attr("scan_output_axes") or [0] * n_out
    results = []
    for acc, direction, axis in zip(collected, out_dirs, out_axes, strict=False):
        stacked = torch.stack(acc[::-1] if direction else acc)
        results.append(stacked.movedim(0, axis % stacked.dim()))
    return results
