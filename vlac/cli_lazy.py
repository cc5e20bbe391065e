"""Commands of `vlac` whose modules import torch at import time, loaded only when they run.

`vlac --help` lists them from the short help below (tests/vlac/test_cli_startup.py checks each
is how the command's docstring starts); `vlac search ...` imports vlac.search_cli then.
"""

from __future__ import annotations

import importlib
from typing import Any

from typer.core import TyperCommand, TyperGroup
from typer.main import get_command_from_info
from typer.models import CommandInfo

# command -> (module, function, the start of the function's docstring)
LAZY_COMMANDS = {
    "search": ("vlac.search_cli", "search_command",
               "Search a space of experiments"),
    "export": ("vlac.export_cli", "export_command",
               "Write a trained run's backbone (and the rest of its modules) as a Hugging Face checkpoint"),
}


def load_command(name: str, rich_markup_mode: Any = "rich"):
    """The click command of a lazy `vlac` command (imports its module)."""
    module, function, _ = LAZY_COMMANDS[name]
    callback = getattr(importlib.import_module(module), function)
    return get_command_from_info(CommandInfo(name=name, callback=callback), pretty_exceptions_short=True,
                                 rich_markup_mode=rich_markup_mode)


class LazyGroup(TyperGroup):
    """A Typer group that lists LAZY_COMMANDS by their short help and imports one only when it is
    the command being run."""

    _resolving = False

    def list_commands(self, ctx) -> list[str]:
        names = list(super().list_commands(ctx))
        return names + [n for n in LAZY_COMMANDS if n not in names]

    def get_command(self, ctx, cmd_name: str):
        if cmd_name in self.commands or cmd_name not in LAZY_COMMANDS:
            return super().get_command(ctx, cmd_name)
        if not self._resolving:  # listed in --help: a stand-in with the short help only
            short = LAZY_COMMANDS[cmd_name][2]
            return TyperCommand(name=cmd_name, help=short, short_help=short)
        command = load_command(cmd_name, self.rich_markup_mode)
        self.add_command(command, cmd_name)
        return command

    def resolve_command(self, ctx, args):
        self._resolving = True
        try:
            return super().resolve_command(ctx, args)
        finally:
            self._resolving = False
