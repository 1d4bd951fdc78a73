"""``pcc schemas``: the versioned event schemas, as producers fetch them."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(help="Event schemas (JSON Schema 2020-12): list them, print one.", no_args_is_help=True)


@app.command("list")
def list_() -> None:
    """List every shipped schema with its versions."""
    from rich.console import Console
    from rich.table import Table

    from pipelines.events.registry import list_schemas, load_schema

    table = Table("name", "version", "title")
    for name, version in list_schemas():
        table.add_row(name, str(version), load_schema(name, version).get("title", ""))
    Console().print(table)


@app.command("show")
def show(
    name: Annotated[
        str, typer.Argument(help="An event type, 'envelope', 'producer_input' or 'ownership_change_input'.")
    ],
    version: Annotated[
        int | None, typer.Option("--version", "-v", help="Schema version (default: latest).")
    ] = None,
) -> None:
    """Print one schema file exactly as shipped."""
    from pipelines.events.registry import schema_text

    typer.echo(schema_text(name, version), nl=False)
