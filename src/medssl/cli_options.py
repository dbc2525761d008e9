"""Command-line options shared by every `medssl` command group (cli.py, cli_pipeline.py)."""

from pathlib import Path
from typing import Annotated

import typer

SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "-S",
        "--set",
        metavar="SECTION.KEY=VALUE",
        help="Override a params.yaml value (repeatable), as in `dvc exp run -S`.",
    ),
]
ParamsOption = Annotated[
    Path,
    typer.Option("--params", help="params.yaml to read; built-in defaults if it does not exist."),
]
