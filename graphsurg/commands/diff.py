"""`graphsurg diff A B`: what changed between two models, in structure, weights and (with --data) numbers.

Exit codes: 0 identical (structurally and, with --data, numerically within tolerance), 1 different,
2 bad input. `graphsurg diff --textconv MODEL` prints the stable text form git's textconv wants.
"""

from __future__ import annotations

import json
import sys

import click

from graphsurg.errors import UsageError


@click.command(name="diff")
@click.argument("models", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the diff as JSON (schema graphsurg.diff/1).")
@click.option("--html", "html_path", type=click.Path(dir_okay=False),
              help="Also write a self-contained HTML page (graph, details, histograms) to this file.")
@click.option("--textconv", "textconv_path", type=click.Path(dir_okay=False), metavar="MODEL",
              help="Print a stable text form of one model (for git's diff.<driver>.textconv) and exit.")
@click.option("--data", type=click.Path(exists=True),
              help="Run both models on this data (.npz or ONNX test-data folder) and compare numbers.")
@click.option("--labels", default="labels", show_default=True, help="Key of the labels array in --data.")
@click.option("--batch-size", default=64, show_default=True, help="Batch size for --data.")
@click.option("--provider", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True,
              help="onnxruntime provider for --data.")
@click.option("--tolerance", default=1e-4, show_default=True, type=float,
              help="With --data: outputs agree when max|b - a| <= tolerance * max(1, max|a|).")
@click.option("--tensors/--no-tensors", default=True, show_default=True,
              help="With --data: also compare every matched intermediate tensor (SQNR).")
@click.option("--color/--no-color", default=None, help="Colour the text (default: when stdout is a terminal).")
@click.pass_context
def command(ctx: click.Context, models: tuple[str, ...], as_json: bool, html_path: str | None,
            textconv_path: str | None, data: str | None, labels: str, batch_size: int, provider: str,
            tolerance: float, tensors: bool, color: bool | None) -> None:
    """Show what changed from model A to model B: edits, ops, weights, interface, metadata.

    Ops are matched by name first, then by structure, so renamed or re-exported models compare
    cleanly. Exit 0 when identical, 1 when they differ, 2 on bad input.
    """
    from graphsurg import serde

    if textconv_path is not None:
        if models:
            raise UsageError("--textconv takes one model and no other arguments")
        from graphsurg.diff.textconv import textconv

        click.echo(textconv(serde.load(textconv_path, detach_external=True)), nl=False)
        return
    if len(models) != 2:
        raise UsageError(f"diff needs two models (got {len(models)}); or --textconv MODEL")
    report = _diff(models, data, labels, batch_size, provider, tolerance, tensors)
    _emit(report, as_json, html_path, color)
    ctx.exit(0 if report.identical else 1)


def _diff(models, data, labels, batch_size, provider, tolerance, tensors):
    from graphsurg.diff import diff_files

    report = diff_files(models[0], models[1])
    if data is not None:
        from graphsurg.diff.numeric import compare_numeric

        report.numeric = compare_numeric(report, data, labels=labels, batch_size=batch_size, provider=provider,
                                         tolerance=tolerance, tensors=tensors)
    return report


def _emit(report, as_json: bool, html_path: str | None, color: bool | None) -> None:
    payload = report.to_json()
    if html_path:
        from graphsurg.diff.html import write_html

        write_html(report, html_path, payload)
    if as_json:
        click.echo(json.dumps(payload, indent=2, allow_nan=False))
        return
    from graphsurg.diff.text import render_text

    use_color = sys.stdout.isatty() if color is None else color
    click.echo(render_text(payload, color=use_color), color=use_color)
