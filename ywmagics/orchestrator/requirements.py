"""``build.modules``: the extra requirements a user asks for, PEP 508 ones only.

They are handed to ``uv pip install`` (or pip) as arguments, so anything else would be an
option of theirs: ``--target DIR`` installed outside the environment, ``--index-url`` chose
another index, ``-r /etc/passwd`` read a file. Each requirement is parsed by ``packaging``;
an option, or what is not a requirement, is a clear error.
"""

from __future__ import annotations

import re

from ywmagics.errors import ConfigurationError

_OPERATOR = re.compile(r"^(===|==|!=|~=|<=|>=|<|>)")
_EXAMPLE = "e.g. 'numpy', 'pandas>=2,<3' or 'numpy scipy==1.13'"


def parse_requirements(text: str, option: str = "modules") -> tuple[str, ...]:
    """The requirements in ``text``, separated by spaces or commas (a piece that starts with a
    version operator belongs to the one before: ``pandas>=2,<3``), each normalised."""
    pieces = [p for p in re.split(r"[\s,]+", text.strip()) if p]
    joined: list[str] = []
    for piece in pieces:
        if _OPERATOR.match(piece) and joined:
            joined[-1] += "," + piece
        elif joined and (piece.startswith("@") or joined[-1].endswith("@")):
            joined[-1] += " " + piece  # name @ url
        else:
            joined.append(piece)
    # Imported at the first install, not at the orchestrator's start (~8 ms of it).
    from packaging.requirements import InvalidRequirement, Requirement

    requirements = []
    for piece in joined:
        if piece.startswith("-"):
            raise ConfigurationError(
                f"build.{option} takes requirements, not options: {piece!r}",
                hint=f"list the packages to install, {_EXAMPLE}",
            )
        try:
            requirements.append(str(Requirement(piece)))
        except InvalidRequirement as error:
            raise ConfigurationError(
                f"build.{option}: {piece!r} is not a requirement ({error})", hint=_EXAMPLE
            ) from error
    return tuple(requirements)
