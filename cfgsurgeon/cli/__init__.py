"""The ``cfgsurgeon`` command line: parse arguments, call the API, print. User mistakes exit non-zero with
one line naming the file and line; heavy frameworks are imported only by the commands that need them.

Adding a command is adding a module, never editing a shared list:

* create ``cfgsurgeon/cli/<topic>.py`` and decorate the command with ``@main.command()``, where ``main``
  comes from ``from . import main``; every module of this package whose name does not start with ``_`` is
  imported below (sorted by name), which registers its commands;
* take the shared options and helpers (``CFG``, ``WEIGHTS``, ``JSON_TABLE``, ``load_model``, ``warn``) from
  ``.common``, and ``click.Choice`` lists from the library's tables (``surgery.prune.METHODS``, ...);
* import the library (and any framework) inside the command function, so ``--help`` stays fast;
* the command parses, calls the library once and prints; library errors name parameters as `name`, and
  ``common.FLAGS`` shows them as flags (add the flag of a new parameter there);
* its tests go in a new ``tests/test_cli_<topic>.py``.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import click

from ..errors import CfgSurgeonError
from .common import with_flags


class _Cli(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CfgSurgeonError as exc:
            raise click.ClickException(with_flags(str(exc))) from None
        except OSError as exc:
            raise click.ClickException(f"{exc.filename or ''}: {exc.strerror or exc}") from None


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cfgsurgeon")
@click.option("-q", "--quiet", is_flag=True, help="Hide warnings about suspicious cfg content.")
@click.option(
    "--tree",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Softmax-tree file for a cfg whose [region]/[softmax] has tree= (YOLO9000's 9k.tree). Default: the "
    "name the cfg gives, looked up in the working directory, the cfg's folder and its parent folder.",
)
@click.pass_context
def main(ctx: click.Context, quiet: bool, tree: Path | None) -> None:
    """Darknet .cfg transpiler and model-surgery tool for YOLO.

    Models are given as --cfg FILE [--weights FILE]; outputs go to -o. Inputs are never modified and
    outputs are written atomically.
    """
    ctx.obj = {"quiet": quiet, "tree": tree}


for _module in sorted(pkgutil.iter_modules(__path__), key=lambda module: module.name):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
