"""Command-line options made from the config dataclasses: names, defaults, choices, help text and
``--help`` sections all come from :class:`regprim.ExplainConfig` and :class:`regprim.SolverConfig`
(:func:`regprim.config.field_docs`) and the solvers' own lists of settings."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
from typing import Any, NoReturn

from regprim.config import ExplainConfig, SolverConfig, field_docs
from regprim.core.regions import parse_cells, parse_grid


def said(parse: Any) -> Any:
    """``parse`` for argparse: its ValueError's own message as the error (argparse would say
    "invalid parse_cells value" instead)."""

    def typed(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    typed.__name__ = parse.__name__
    return typed


class Parser(argparse.ArgumentParser):
    """argparse with short errors: the error, a close option name for an unknown one, and
    where the help is; not the whole usage."""

    def error(self, message: str) -> NoReturn:
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        hint = ""
        if unknown:
            options = [o for a in self._actions for o in a.option_strings]
            for word in unknown.group(1).split():
                close = difflib.get_close_matches(word.split("=")[0], options, n=1)
                if close:
                    hint += f"; did you mean {close[0]} (for {word})?"
        self.exit(2, f"{self.prog}: error: {message}{hint}\n(see {self.prog} --help)\n")


# fields whose command-line text is not a plain number or word
PARSERS: dict[str, Any] = {
    "grid": said(parse_grid),
    "players": said(parse_cells),
    "class_index": str,
}
SCALARS = {"int": int, "float": float, "str": str}


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


def option_group(cls: type, name: str) -> str:
    """The ``--help`` section of a config field: the settings of what to explain, or, for a
    solver setting, the solver that reads it (the field's metadata, ``config.read_by``)."""
    if cls is not SolverConfig:
        return "what to explain"
    readers = SolverConfig.__dataclass_fields__[name].metadata["solvers"]
    return f"the {readers[0]} solver" if len(readers) == 1 else "every solver"


def add_config_options(
    parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()
) -> None:
    """One option per field of the dataclass ``cls`` (``--field-name``; metadata ``cli`` renames
    it), with its default, choices and docstring text, in ``--help`` sections
    (:func:`option_group`)."""
    docs = field_docs(cls)
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        title = option_group(cls, f.name)
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        flag = "--" + f.metadata.get("cli", f.name).replace("_", "-")
        default = _default(f)
        shown = "x".join(map(str, default)) if isinstance(default, tuple) else default
        kwargs: dict[str, Any] = {"dest": f.name, "default": default}
        text = docs[f.name].replace("``", "") + ("" if default is None else f" (default: {shown})")
        kwargs["help"] = text.replace("%", "%%")
        if f.type == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = PARSERS.get(f.name) or SCALARS[str(f.type).split(" |")[0]]
            kwargs["choices"] = f.metadata.get("choices")
        groups[title].add_argument(flag, **kwargs)


def config_from(args: argparse.Namespace) -> ExplainConfig:
    """The :class:`ExplainConfig` of parsed ``explain`` options."""
    values = vars(args)

    def pick(cls: type) -> dict[str, Any]:
        return {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values}

    return ExplainConfig(**pick(ExplainConfig) | {"solver": SolverConfig(**pick(SolverConfig))})


def options_reference(parser: argparse.ArgumentParser) -> str:
    """Markdown of every command of ``parser`` and its options, with default and meaning (what
    docs/cli.md holds: :func:`regprim.app.cli.cli_reference`)."""
    lines = [
        "# Command line",
        "",
        "Generated from the argument parsers (`regprim.app.cli.cli_reference`); "
        "`tests/test_cli.py` keeps it in sync.",
        "",
    ]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    for name, command in sub.choices.items():
        lines += [f"## `regprim {name}`", "", helps.get(name) or "", ""]
        lines += ["| option | default | meaning |", "| --- | --- | --- |"]
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flags = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.dest}`"
            text = (action.help or "").replace("%%", "%")
            found = re.search(r" ?\(default: (.*)\)$", text)
            if found:
                shown, text = f"`{found.group(1)}`", text[: found.start()]
            elif action.default is None or action.default is False:
                shown = ""
            else:
                shown = f"`{action.default}`"
            text = text.replace("|", "\\|")
            if action.choices:
                text += f" (one of {', '.join(map(str, action.choices))})"
            lines.append(f"| {flags} | {shown} | {text} |")
        lines.append("")
    return "\n".join(lines)
