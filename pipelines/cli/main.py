"""Entry point of the ``pcc`` command.

The root knows no layer.  Each layer publishes its own Typer group under the
``pcc.commands`` entry-point group in ``pyproject.toml`` (``kafka``, ``chain``,
``ledger``, ``produce``, ``speed``, ``batch``, ``serve`` ...); the root mounts
whatever is installed, so dependencies keep pointing one way.

Errors are caught here and only here: a one-line message on stderr and the
exit code :data:`EXIT_CODES` gives the error's kind (the table of docs/cli.md);
the traceback only with ``--debug``.
"""

from __future__ import annotations

import functools
import sys
import traceback
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import click
import typer
from typer.core import TyperGroup, TyperOption

from pipelines.errors import (
    PccError,
    PccNotFoundError,
    PccPaymentRequiredError,
    PccPermissionError,
    PccStateError,
    PccTransientError,
    PccValueError,
)
from pipelines.quiet import quiet_expected_warnings

if TYPE_CHECKING:  # pydantic-settings is loaded by the commands that read settings, not by --help
    from pipelines.settings import Settings


@functools.cache
def _layer_entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group="pcc.commands")}


class _RootOption(TyperOption):
    """A root option (``--config``, ``--help``) that was not given costs nothing: Typer's coercion
    of a value imports pydantic (a third of a help screen's start), and there is no value to coerce."""

    def process_value(self, ctx: Any, value: Any) -> Any:
        if value is None and not self.required:
            return None if self.callback is None else self.callback(ctx, self, None)
        return super().process_value(ctx, value)


class _Group(TyperGroup):
    """A command group whose ``--help`` option, when not given, costs nothing either."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if type(option) is TyperOption:
            option.__class__ = _RootOption
        return option


#: Help and usage errors as plain text: Typer's rich help boxes import rich's Markdown and syntax
#: highlighting (about half a second of every help screen's start; bench/bench_cli.py).
HELP_MARKUP: Any = None


def _cheap_help(group: TyperGroup) -> None:
    """Make ``group`` and the groups under it :class:`_Group` (built by Typer as plain TyperGroups),
    with plain-text help."""
    if type(group) is TyperGroup:
        group.__class__ = _Group
    group.rich_markup_mode = HELP_MARKUP
    for sub in group.commands.values():
        if sub.short_help is None and sub.help:
            sub.short_help = _first_paragraph(sub.help)
        if isinstance(sub, TyperGroup):
            _cheap_help(sub)
        elif hasattr(sub, "rich_markup_mode"):
            sub.rich_markup_mode = HELP_MARKUP


def _first_paragraph(text: str) -> str:
    """A command's line in its group's listing: its help's first paragraph, whole (not cut at 45 characters)."""
    return " ".join(text.strip().split("\n\n")[0].split())


class _LazyLayers(_Group):
    """Mounts each layer's command only when it is asked for.

    ``pcc kafka up`` imports the Kafka layer's command module and nothing else,
    and ``pcc --help`` none: it reads each layer's help line from its source
    (:mod:`pipelines.cli.lazy`).  A command module imports Typer and what its
    help needs, never an engine (web3, DuckDB, Arrow, Beam, Spark, kafka-python)
    nor the settings model; its commands import those when they run
    (tests/unit/pipelines/test_cli_lazy_imports.py).  A new layer adds one line under
    ``[project.entry-points."pcc.commands"]`` in pyproject.toml.
    """

    _listing = False  # True while the root's help lists the layers

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if type(param) is TyperOption:
                param.__class__ = _RootOption

    def _entry_points(self) -> dict[str, EntryPoint]:
        return _layer_entry_points()

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._entry_points()))

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        ep = self._entry_points().get(cmd_name)
        if ep is None:
            return None
        if self._listing:
            from pipelines.cli.lazy import help_from_source

            text = help_from_source(ep)
            if text is not None:  # a listing entry only: running it loads the layer
                return click.Command(cmd_name, help=text, short_help=_first_paragraph(text))
        try:
            obj: Any = ep.load()
        except ImportError as exc:  # an optional extra is not installed
            missing = str(exc)

            def unavailable() -> None:
                raise PccError(f"'pcc {cmd_name}' is unavailable: {missing}")

            obj = unavailable
        if isinstance(obj, typer.Typer):
            group = typer.main.get_group(obj)
            group.name = cmd_name
            _cheap_help(group)
            return group
        sub = typer.Typer(rich_markup_mode=HELP_MARKUP)
        sub.command(cmd_name)(obj)
        command = typer.main.get_command(sub)
        command.name = cmd_name
        return command


app = typer.Typer(
    name="pcc",
    cls=_LazyLayers,
    help="PCC - the Digital Car Passport data platform.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=HELP_MARKUP,
)

_DEBUG = False

#: Exit codes by kind of error, the first matching kind wins (docs/cli.md lists them).  Usage
#: errors Typer finds itself exit 2 too; an error of none of these kinds exits with its own
#: ``exit_code`` (1 unless its layer declares one: the batch audit's 7).
EXIT_CODES: tuple[tuple[type[PccError], int, str], ...] = (
    (PccPaymentRequiredError, 8, "cannot pay: funds, allowance or gas missing (HTTP 402)"),
    (PccPermissionError, 4, "forbidden: no role, no grant, bad signature, a refused statement (401, 403)"),
    (PccNotFoundError, 3, "not found: an unknown source, proposal, vehicle, run (404)"),
    (PccTransientError, 5, "transient: a broker, node or service is down or busy; retry (429, 502-504)"),
    (PccValueError, 2, "invalid input: a bad argument, setting, file or contract rule (400, 413)"),
    (PccStateError, 6, "wrong state: not running, not deployed, no price set yet (409, 503 no price)"),
)
INTERNAL = 70  # a bug: an exception PCC did not raise on purpose
INTERRUPTED = 130


def exit_code(exc: PccError) -> int:
    """The exit code of ``exc``: its kind's in :data:`EXIT_CODES`, else its own ``exit_code``."""
    for kind, code, _ in EXIT_CODES:
        if isinstance(exc, kind) and (kind is not PccTransientError or exc.transient):
            return code
    return exc.exit_code


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", help="TOML settings file.")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    global _DEBUG
    _DEBUG = _DEBUG or debug
    ctx.obj = {"config": config}


def settings_from(ctx: typer.Context) -> Settings:
    """The settings for a command: the root's ``--config`` file plus the environment."""
    from pipelines.settings import load_settings

    root = ctx.find_root()
    config = (root.obj or {}).get("config") if root.obj else None
    return load_settings(config)


def main(argv: list[str] | None = None) -> int:
    global _DEBUG
    args = list(sys.argv[1:] if argv is None else argv)
    _DEBUG = "--debug" in args
    quiet_expected_warnings()
    try:
        # standalone mode: Typer prints usage errors itself and exits with code 2
        app(args=args, standalone_mode=True, prog_name="pcc")
    except PccError as exc:
        if _DEBUG:
            traceback.print_exc()
        print(f"pcc: error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print("pcc: interrupted", file=sys.stderr)
        return INTERRUPTED
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception as exc:
        if _DEBUG:
            traceback.print_exc()
        else:
            print(
                f"pcc: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
                file=sys.stderr,
            )
        return INTERNAL
    return 0


if __name__ == "__main__":
    sys.exit(main())
