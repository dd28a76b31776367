"""The `graphsurg` command line: parse, call the library, print, exit with a documented code.

Exit codes: 0 ok, 1 budget exceeded (or nothing changed under --strict), 2 bad input or usage,
3 internal error.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback

import click

from graphsurg.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, GraphsurgError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="graphsurg")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """graphsurg: ONNX graph surgery with measured cost and recovery."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
@click.option("--top", default=10, show_default=True, help="How many of the largest layers to list.")
def inspect(model: str, as_json: bool, top: int) -> None:
    """Show opsets, inputs/outputs, op histogram, parameters and largest layers of MODEL."""
    from graphsurg import serde
    from graphsurg.report import format_report, inspect_model

    info = inspect_model(serde.load(model), model, top)
    click.echo(json.dumps(info, indent=2) if as_json else format_report(info))


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the result.")
@click.option("-p", "--pass", "specs", multiple=True, metavar="SPEC",
              help="A pass spec, name{key=value,...}; repeat to run several in order.")
@click.option("--changes", type=click.Path(dir_okay=False), help="Write the JSON change record here.")
@click.option("--external-data/--no-external-data", default=None,
              help="Store weights in a .data file beside the model (default: as the input did).")
@click.option("--size-threshold", default=1024, show_default=True, help="Smallest tensor (bytes) stored externally.")
@click.option("--durable", is_flag=True, help="Flush the written files to disk before renaming them into place.")
@click.option("--strict", is_flag=True, help="Exit 1 when the passes changed nothing.")
@click.option("--data", type=click.Path(exists=True),
              help="Calibration/evaluation data (.npz or ONNX test-data folder).")
@click.option("--labels", default="labels", show_default=True, help="Key of the labels array in --data.")
@click.option("--batch-size", default=64, show_default=True, help="Batch size when passes run the model.")
@click.option("--max-degradation", type=float, help="Budget for passes that trade accuracy (e.g. quantize fallback).")
@click.option("--metric", default="agreement", show_default=True, help="Metric the budget is measured in.")
@click.option("--seed", default=0, show_default=True, help="Seed for passes that draw random numbers.")
def apply(model: str, output: str, specs: tuple[str, ...], changes: str | None, external_data: bool | None,
          size_threshold: int, durable: bool, strict: bool, data: str | None, labels: str, batch_size: int,
          max_degradation: float | None, metric: str, seed: int) -> None:
    """Run passes on MODEL and write OUTPUT; with no -p it is a lossless round trip."""
    from graphsurg import serde
    from graphsurg.errors import BudgetExceeded
    from graphsurg.pipeline import make_pass, run_passes
    from graphsurg.services import DataSpec, build_context

    passes = [make_pass(spec) for spec in specs]
    loaded = serde.load(model)
    ctx = build_context(DataSpec(data, labels, batch_size) if data else None, seed=seed, strict=strict,
                        max_degradation=max_degradation, metric=metric)
    record = run_passes(loaded, passes, ctx)
    for result in record.results:
        for refusal in result.refused:
            click.echo(f"{result.pass_name}: left {refusal['target']}: {refusal['reason']}", err=True)
        if result.summary:
            click.echo(f"{result.pass_name}: {result.summary}", err=True)
    serde.save(loaded, output, external_data=external_data, size_threshold=size_threshold, durable=durable)
    if changes:
        record.save(changes)
    missed = [r.pass_name for r in record.results if r.changes.get("budget_met") is False]
    if missed:  # a pass searched for a setting within --max-degradation and found none; its best is written
        raise BudgetExceeded(f"{', '.join(missed)}: no setting met --max-degradation {max_degradation} "
                             f"({metric}); the best model found was written to {output}")
    if strict and passes and not record.modified:
        raise BudgetExceeded("--strict: the passes changed nothing")


@cli.command(name="passes")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
def list_passes(as_json: bool) -> None:
    """List the available passes and their parameters."""
    from graphsurg.pipeline import all_passes
    from graphsurg.pipeline.params import describe

    table = {name: {"doc": _summary(cls.__doc__),
                    "params": [{"name": n, "type": t, "default": d} for n, t, d in describe(cls.Params)]}
             for name, cls in all_passes().items()}
    if as_json:
        click.echo(json.dumps(table, indent=2))
        return
    width = max([len(p["name"]) for entry in table.values() for p in entry["params"]] + [16])
    types = max([len(p["type"]) for entry in table.values() for p in entry["params"]] + [24])
    for name, entry in table.items():
        click.echo(f"{name}: {entry['doc']}")
        for param in entry["params"]:
            click.echo(f"    {param['name']:<{width}} {param['type']:<{types}} default {param['default']}")


def _summary(doc: str | None) -> str:
    """The first paragraph of a docstring, on one line."""
    paragraph = (doc or "").strip().split("\n\n")[0]
    return " ".join(paragraph.split())


def _add_feature_commands() -> None:
    import importlib
    import pkgutil

    import graphsurg.commands as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        command = getattr(module, "command", None)
        if isinstance(command, click.Command):
            cli.add_command(command)


_add_feature_commands()


# click >= 8.2 raises this for a group called without a command (older versions print and exit)
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line on stderr and a documented exit code for every failure."""
    try:
        code = cli.main(args=argv, prog_name="graphsurg", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except _NO_ARGS_IS_HELP as exc:  # a bare `graphsurg`: the help, not an error line around it
        click.echo(exc.format_message(), err=True)
        code = EXIT_BAD_INPUT
    except click.ClickException as exc:
        click.echo(f"graphsurg: error: {exc.format_message()}", err=True)
        code = EXIT_BAD_INPUT
    except click.exceptions.Abort:
        click.echo("graphsurg: aborted", err=True)
        code = EXIT_INTERNAL
    except GraphsurgError as exc:
        click.echo(f"graphsurg: error: {_one_line(exc)}", err=True)
        code = exc.exit_code
    except (MemoryError, OSError) as exc:
        click.echo(f"graphsurg: error: {_one_line(exc)}", err=True)
        code = EXIT_BAD_INPUT if isinstance(exc, OSError) else EXIT_INTERNAL
    except Exception as exc:  # noqa: BLE001 - the last line of defence: never a bare traceback
        if os.environ.get("GRAPHSURG_DEBUG"):
            traceback.print_exc()
        click.echo(f"graphsurg: internal error: {type(exc).__name__}: {_one_line(exc)} "
                   "(set GRAPHSURG_DEBUG=1 for a traceback)", err=True)
        code = EXIT_INTERNAL
    sys.exit(code or 0)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:500] if text else type(exc).__name__


if __name__ == "__main__":
    main()
