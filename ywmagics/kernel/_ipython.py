"""Typed doors to the parts of IPython that are untyped or internal, in one place.

IPython's ``magic_arguments``, ``arg_split`` and ``publish_display_data`` carry no types (in
IPython 8); completion hooks and the undoing of a registration reach into its internals. Nothing
else of ywmagics touches them.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable
from typing import Any, TypeVar, cast

from IPython.core import magic as _magic
from IPython.core import magic_arguments as _magic_arguments
from IPython.core.error import UsageError
from IPython.utils import process as _process

F = TypeVar("F", bound=Callable[..., Any])


def magic_arguments_as(typed_name: str) -> Callable[[F], F]:
    """IPython's ``@magic_arguments``, with the usage line showing the magic as it is typed
    (``%%interpreter``): IPython adds one ``%`` itself."""
    return _magic_arguments.magic_arguments(typed_name[1:])  # type: ignore[no-untyped-call]


def argument(*args: Any, **kwargs: Any) -> Callable[[F], F]:
    return _magic_arguments.argument(*args, **kwargs)  # type: ignore[no-untyped-call]


def line_cell_magic(func: F) -> F:
    return cast(F, _magic.line_cell_magic(func))


def cell_magic(func: F) -> F:
    return cast(F, _magic.cell_magic(func))


def parser_class() -> type[Any]:
    """The argparse parser of magics, whose errors are ``UsageError``."""
    return _magic_arguments.MagicArgumentParser


def help_formatter() -> type[Any]:
    return _magic_arguments.MagicHelpFormatter


def split_line(line: str) -> list[str]:
    """The words of a magic's line, as a shell splits them; a trailing ``# comment`` dropped."""
    try:
        tokens: list[str] = _process.arg_split(line, posix=True)  # type: ignore[attr-defined,no-untyped-call]
    except ValueError as error:
        raise UsageError(f"cannot split the arguments: {error}") from error
    for index, token in enumerate(tokens):
        if token.startswith("#"):
            return tokens[:index]
    return tokens


def publish(data: dict[str, Any], metadata: dict[str, Any] | None = None) -> None:
    from IPython import display  # looked up at each call, as IPython's own callers do

    display.publish_display_data(data=data, metadata=metadata or {})  # type: ignore[no-untyped-call]


def display(value: object) -> None:
    """Show ``value`` under the cell in each form it has (``_repr_html_``, text...)."""
    from IPython import display as _display

    _display.display(value)  # type: ignore[no-untyped-call]


def completer(owner: object, method: Callable[[Any], list[str]]) -> Callable[[Any, Any], list[str]]:
    """Adapt ``method(event)`` to IPython's hook signature ``hook(shell, event)``; the hook is
    marked with its ``owner`` so that :func:`remove_completers` finds it again."""

    def hook(shell: Any, event: Any) -> list[str]:
        return method(event)

    hook.ywmagics = owner  # type: ignore[attr-defined]
    return hook


def add_completer(shell: Any, owner: object, key: str, method: Callable[[Any], list[str]]) -> None:
    """Complete lines that start with ``key`` with ``method(event)`` (``event.line``, the line
    up to the cursor, and ``event.symbol``, the word being typed). With IPython's matchers API
    (8.6 on), its answer is all that is offered: a command hook's answer came mixed with Jedi's
    (``%%interpreter `` offered ``and``, ``if``, ``in`` beside the aliases)."""
    try:
        from IPython.core.completer import SimpleCompletion, context_matcher
    except ImportError:  # an IPython before 8.6
        shell.set_hook("complete_command", completer(owner, method), str_key=key)
        return

    @context_matcher()  # type: ignore[untyped-decorator,misc]
    def matcher(context: Any) -> dict[str, Any]:
        line = context.text_until_cursor
        if not (line.startswith(key + " ") and context.cursor_line == 0):
            return {"completions": [], "suppress": False}
        event = types.SimpleNamespace(line=line, symbol=context.token)
        found = [
            SimpleCompletion(text=text, type="param")
            for text in method(event)
            if text.startswith(context.token)  # IPython filtered a hook's answer; not a matcher's
        ]
        return {"completions": found, "suppress": bool(found)}

    matcher.ywmagics = owner  # type: ignore[attr-defined]
    matcher.matcher_identifier = f"ywmagics:{key}"  # type: ignore[attr-defined]  # one each
    shell.Completer.custom_matchers.append(matcher)


def remove_completers(shell: Any, owner: object, keys: tuple[str, ...]) -> None:
    """Undo :func:`add_completer` (IPython has no API for it: its lists are edited)."""
    matchers = getattr(shell.Completer, "custom_matchers", None)
    if matchers is not None:
        matchers[:] = [m for m in matchers if getattr(m, "ywmagics", None) is not owner]
    dispatcher = shell.strdispatchers.get("complete_command")
    if dispatcher is None:
        return
    for key in keys:
        chain = dispatcher.strs.get(key)
        if chain is not None:
            chain.chain = [
                (priority, hook)
                for priority, hook in chain.chain
                # IPython keeps each hook bound to the shell: the mark is on its function
                if getattr(getattr(hook, "__func__", hook), "ywmagics", None) is not owner
            ]


def unregister_magics(shell: Any, owner: object, magics: tuple[tuple[str, str], ...]) -> None:
    """Undo ``register_magics(owner)``: its magics, its registry entry, its configurable."""
    manager = shell.magics_manager
    for kind, name in magics:
        manager.magics[kind].pop(name, None)
    manager.registry.pop(type(owner).__name__, None)
    with contextlib.suppress(ValueError):
        cast(list[Any], shell.configurables).remove(owner)
