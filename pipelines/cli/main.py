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

import sys
import traceback
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

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
from pipelines.settings import Settings, load_settings


class _LazyLayers(TyperGroup):
    """Mounts each layer's command only when it is asked for.

    ``pcc kafka up`` imports the Kafka layer and nothing else (the speed and
    batch layers pull in Beam and Spark, which take seconds to import).  The
    root's ``--help`` lists every layer, and so loads them all.
    """

    def _entry_points(self) -> dict[str, EntryPoint]:
        return {ep.name: ep for ep in entry_points(group="pcc.commands")}

    def list_commands(self, ctx: Any) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._entry_points()))

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        ep = self._entry_points().get(cmd_name)
        if ep is None:
            return None
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
            return group
        sub = typer.Typer()
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
)

_DEBUG = False

#: Exit codes by kind of error, the first matching kind wins (docs/cli.md lists them).  Usage
#: errors Typer finds itself exit 2 too; an error of none of these kinds exits with its own
#: ``exit_code`` (1 unless its layer declares one: the batch audit's 7).
EXIT_CODES: tuple[tuple[type[PccError], int, str], ...] = (
    (PccPaymentRequiredError, 8, "cannot pay: funds, allowance or gas missing (HTTP 402)"),
    (PccPermissionError, 4, "forbidden: no role, no grant, bad signature, a refused statement (401, 403)"),
    (PccNotFoundError, 3, "not found: an unknown source, proposal, vehicle, run (404)"),
    (PccTransientError, 5, "transient: a broker, node or service is unavailable or busy; retry (429, 502)"),
    (PccValueError, 2, "invalid input: a bad argument, setting, file or a contract rule it breaks (400, 413)"),
    (PccStateError, 6, "wrong state: not running, not deployed, no price set yet (409, 503)"),
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
