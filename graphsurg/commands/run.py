"""`graphsurg run [RECIPE]`: the main job — surgery, measurement, recovery, certificate."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command(name="run")
@click.argument("recipe", required=False, type=click.Path(dir_okay=False))
@click.option("-o", "--output-dir", type=click.Path(file_okay=False), help="Where to write (default: the recipe's "
              "[output].dir, else ./graphsurg-out).")
@click.option("--json", "as_json", is_flag=True, help="Print the certificate as JSON instead of the table.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
def command(recipe: str | None, output_dir: str | None, as_json: bool, quiet: bool) -> None:
    """Run a surgery RECIPE (TOML); without one, the bundled default recipe on digits_cnn.

    Exit 0 within budget, 1 over budget (the best model is still written, named *.over-budget.onnx),
    2 bad input (a recipe error is located before any work starts), 3 internal error (e.g. a pass
    produced a model the checker or onnxruntime rejects: the pass is named and nothing is written).
    """
    from graphsurg.bundled import DEFAULT_RECIPE
    from graphsurg.certificate import format_table
    from graphsurg.errors import BudgetExceeded
    from graphsurg.recipe import load_recipe
    from graphsurg.surgery import run_recipe

    loaded = load_recipe(recipe or DEFAULT_RECIPE)
    outdir = Path(output_dir) if output_dir else loaded.output.dir
    document = run_recipe(loaded, outdir, quiet=quiet)
    click.echo(json.dumps(document, indent=2, sort_keys=True) if as_json else format_table(document))
    if document["status"] != "within_budget":
        budget = document["budget"]
        worse = "could not be measured" if budget["degradation"] is None else \
            f"degraded by {budget['degradation']:.4g} > {budget['max_degradation']}"
        raise BudgetExceeded(f"over budget: {budget['metric']} {worse}; the best model is written as "
                             f"{outdir / document['output']['model']}")
