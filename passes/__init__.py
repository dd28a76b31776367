"""graphsurg's rewrite passes, one per module; the registry discovers them by name."""
