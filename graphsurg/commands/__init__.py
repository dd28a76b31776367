"""Extra CLI commands: every module here that defines a click command named `command` is added to
the `graphsurg` group (so each feature registers its command without editing cli.py)."""
