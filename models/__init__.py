"""The bundled digits models, data and default recipe (installed as `graphsurg.bundled`)."""

from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent
DEFAULT_RECIPE = BUNDLED_DIR / "default_recipe.toml"
