"""Did-you-mean for the command line: a mistyped flag, command or choice gets the closest real one, and the
error points at the help of the command it was typed for (`oomladder run --help`, not `oomladder --help`)."""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Sequence

_CHOICE = re.compile(r"^argument (?P<what>[^:]+): invalid choice: '(?P<given>[^']*)' \(choose from (?P<choices>.*)\)$")


def closest(given: str, candidates: Sequence[str]) -> str | None:
    found = difflib.get_close_matches(given, list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


def options(parser: argparse.ArgumentParser) -> list[str]:
    """The flags a person may type (not --help, nor a hidden old name)."""
    return [o for a in parser._actions if a.help is not argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)
            for o in a.option_strings if o.startswith("--")]


def unknown_options(parser: argparse.ArgumentParser, tokens: Sequence[str]) -> list[str]:
    """The flags in `tokens` (a command's arguments) that `parser` does not know, as argparse would read them: up to
    `--`, skipping each known flag's value, and up to the training command where the parser takes one."""
    known = parser._option_string_actions
    takes_command = any(a.nargs == argparse.REMAINDER for a in parser._actions if not a.option_strings)
    unknown, rest = [], iter(tokens)
    for token in rest:
        if token == "--":
            break
        if not token.startswith("-") or token == "-" or re.fullmatch(r"-\d+(\.\d+)?", token):
            if takes_command:
                break
            continue
        name = token.split("=", 1)[0]
        matches = [o for o in known if o == name] or [o for o in known if o.startswith(name) and name.startswith("--")]
        if len(matches) != 1:
            unknown.append(name)
        elif known[matches[0]].nargs != 0 and "=" not in token:
            next(rest, None)  # the flag's value
    return unknown


def unknown_message(parser: argparse.ArgumentParser, names: Sequence[str]) -> str:
    hint = closest(names[0].split("=", 1)[0], options(parser))
    return (f"unrecognized arguments: {' '.join(names)}" + (f"; did you mean {hint}?" if hint else "")
            + f" (see '{parser.prog} --help')")


def hinted(message: str) -> str:
    """argparse's 'invalid choice' with the closest choice, and the command's own words for what was chosen."""
    match = _CHOICE.match(message)
    if match is None:
        return message
    choices = re.findall(r"'([^']*)'", match["choices"])
    hint = closest(match["given"], choices)
    what = "command" if match["what"].startswith("{") else match["what"]
    return (f"{what}: invalid choice: '{match['given']}'" + (f"; did you mean '{hint}'?" if hint else "")
            + f" (choose from {', '.join(choices)})")
