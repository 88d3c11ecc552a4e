"""A tiny option parser: argparse costs a tenth of the helpers' start-up budget."""
from __future__ import annotations

from .errors import USAGE, KitError


def is_digits(text: str) -> bool:
    """Only ASCII digits, at least one: what int() takes as a count. str.isdigit() also
    takes '²' and other Unicode digits, which int() refuses with a traceback."""
    return text.isascii() and text.isdigit()


def parse(argv: list, options: dict, usage: str) -> tuple:
    """Split argv into ({option: value}, [operands]).

    options maps '--name' to 'value' (takes an argument), 'flag' (none) or 'optional'
    (takes the next word unless it starts with '-'; None if absent).
    """
    values: dict = {}
    operands: list = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, inline = arg.partition("=")
        kind = options.get(name) if arg.startswith("--") else None
        if arg in ("-h", "--help"):
            raise KitError(usage, 0)
        if arg == "--":
            operands.extend(argv[i + 1:])
            break
        if kind is None:
            if arg.startswith("-") and arg != "-":
                raise KitError(f"unknown option {arg}\n{usage}", USAGE)
            operands.append(arg)
        elif kind == "flag":
            values[name] = True
        elif eq:
            values[name] = inline
        elif kind == "optional":
            if i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                values[name] = argv[i + 1]
                i += 1
            else:
                values[name] = None
        elif i + 1 < len(argv):
            values[name] = argv[i + 1]
            i += 1
        else:
            raise KitError(f"option {name} needs a value\n{usage}", USAGE)
        i += 1
    return values, operands


def number(text: str, what: str, code: int = USAGE) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):  # also refuses nan
        raise KitError(f"{what} must be a number of seconds, not {text!r}", code)
    return value
