"""`graphsurg eval`: measure a model (task metrics, fidelity to a reference, latency, size)."""

from __future__ import annotations

import json

import click


@click.command(name="eval")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--ref", type=click.Path(dir_okay=False), help="Reference model for fidelity metrics.")
@click.option("--data", type=click.Path(), help=".npz file or ONNX test-data folder (default: synthetic inputs).")
@click.option("--labels", default="labels", show_default=True, help="Key of the labels array in a .npz.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1), help="Samples per run.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON contract instead of text.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Also write the JSON result to this file.")
@click.option("--per-layer", is_flag=True, help="SQNR of every intermediate tensor matched with --ref.")
@click.option("--changes", type=click.Path(dir_okay=False, exists=True),
              help="Change record whose value_map matches renamed tensors for --per-layer.")
@click.option("--provider", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True,
              help="onnxruntime execution provider; auto = CUDA when available, else CPU.")
@click.option("--threads", type=click.IntRange(min=1), help="onnxruntime intra-op threads (default: its own).")
@click.option("--dim", "dims", multiple=True, metavar="NAME=SIZE", help="Size of a symbolic dimension (repeat).")
@click.option("--samples", default=64, show_default=True, type=click.IntRange(min=1),
              help="Rows of synthetic data when --data is not given.")
@click.option("--seed", default=0, show_default=True, help="Seed of synthetic data.")
@click.option("--latency-runs", default=20, show_default=True, type=click.IntRange(min=0),
              help="Timed runs at --batch-size (0: skip latency).")
@click.option("--warmup", default=3, show_default=True, type=click.IntRange(min=0), help="Untimed runs first.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or notes on stderr.")
def command(model: str, ref: str | None, data: str | None, labels: str, batch_size: int, as_json: bool,
            output: str | None, per_layer: bool, changes: str | None, provider: str, threads: int | None,
            dims: tuple[str, ...], samples: int, seed: int, latency_runs: int, warmup: int, quiet: bool) -> None:
    """Measure MODEL: loss/accuracy with labels, fidelity to --ref, latency and size on disk.

    Metrics that do not apply are null in --json (n/a in text). Identical outputs have infinite
    SQNR: sqnr_db is null and sqnr_infinite true.
    """
    from graphsurg.errors import UsageError
    from graphsurg.eval.compare import value_map_from_record
    from graphsurg.eval.data import parse_dims
    from graphsurg.eval.report import format_text, to_json
    from graphsurg.eval.service import evaluate
    from graphsurg.fsutil import write_text

    if changes and not per_layer:
        raise UsageError("--changes only matters with --per-layer")
    if per_layer and not ref:
        raise UsageError("--per-layer compares against a reference: give --ref")
    result = evaluate(model, data, ref=ref, labels=labels, batch_size=batch_size, provider=provider,
                      threads=threads, dims=parse_dims(dims), samples=samples, seed=seed,
                      latency_runs=latency_runs, warmup=warmup, per_layer=per_layer,
                      value_map=value_map_from_record(changes) if changes else None, progress=not quiet)
    result = to_json({"model": model, **result})
    if result.get("provider_note") and not quiet:
        click.echo(f"graphsurg: {result['provider_note']}", err=True)
    text = json.dumps(result, indent=2)
    if output:
        write_text(output, text + "\n")
    click.echo(text if as_json else format_text(result))
