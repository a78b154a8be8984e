"""Configuration errors: every problem found is collected, each one a line an operator can act on.

`gateway check` prints one line per problem and `gateway run` exits 2 with them, so the loaders
never stop at the first bad value: an operator fixing a file should see everything at once.
"""
from __future__ import annotations

from collections.abc import Iterable


class ConfigurationError(Exception):
    """Base of EnvError and ConfigErrors: `problems` holds one human line per problem."""

    problems: list[str]

    def __str__(self) -> str:
        return "\n".join(self.problems)


class EnvError(ConfigurationError):
    """A bad environment variable: `var` names it, `message` says the accepted form.

    load_settings() raises one EnvError carrying every bad variable: `var`/`message` describe the
    first, `errors` lists all of them (itself first), `problems` the matching lines
    ("GATEWAY_PORT: expected an integer 1-65535, got 'abc'").
    """

    def __init__(self, var: str, message: str, more: Iterable[EnvError] = ()) -> None:
        self.var = var
        self.message = message
        self.errors: list[EnvError] = [self, *more]
        self.problems = [f"{e.var}: {e.message}" for e in self.errors]
        super().__init__(self.problems[0])

    def __str__(self) -> str:
        return "\n".join(self.problems)


class ConfigErrors(ConfigurationError):
    """Problems in the TOML file, each "path: message" (`routes[2].limt: unknown key`).

    `source` is the file the problems came from (None for an in-memory document).
    """

    def __init__(self, problems: Iterable[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(*self.problems)

    @property
    def errors(self) -> list[str]:
        return self.problems
