"""Entry point of the ``pcc`` command.

The root knows no layer.  Each layer publishes its own Typer group under the
``pcc.commands`` entry-point group in ``pyproject.toml`` (``kafka``, ``chain``,
``ledger``, ``produce``, ``speed``, ``batch``, ``serve`` ...); the root mounts
whatever is installed, so dependencies keep pointing one way.

Errors are caught here and only here: a one-line message on stderr and the
error's exit code; the traceback only with ``--debug``.
"""

from __future__ import annotations

import sys
import traceback
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines.errors import PccError
from pipelines.settings import Settings, load_settings

app = typer.Typer(
    name="pcc",
    help="PCC - the Digital Car Passport data platform.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_DEBUG = False


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


def _mount_layers() -> None:
    for ep in sorted(entry_points(group="pcc.commands"), key=lambda e: e.name):
        try:
            obj: Any = ep.load()
        except ImportError as exc:  # an optional extra is not installed
            missing = str(exc)

            def _unavailable(missing: str = missing, name: str = ep.name) -> None:
                raise PccError(f"'pcc {name}' is unavailable: {missing}")

            app.command(ep.name, help=f"(unavailable: {missing})")(_unavailable)
            continue
        if isinstance(obj, typer.Typer):
            app.add_typer(obj, name=ep.name)
        else:
            app.command(ep.name)(obj)


def main(argv: list[str] | None = None) -> int:
    global _DEBUG
    args = list(sys.argv[1:] if argv is None else argv)
    _DEBUG = "--debug" in args
    _mount_layers()
    try:
        app(args=args, standalone_mode=False)
    except PccError as exc:
        if _DEBUG:
            traceback.print_exc()
        print(f"pcc: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except typer.Abort:
        print("pcc: aborted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("pcc: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # typer/click usage errors and explicit exits
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    except Exception as exc:  # click usage errors arrive as ClickException
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        if _DEBUG:
            traceback.print_exc()
        else:
            print(f"pcc: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        return 70
    return 0


if __name__ == "__main__":
    sys.exit(main())
