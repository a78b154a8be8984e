"""`gateway --help`, `gateway help [COMMAND]` and `gateway COMMAND --help`.

Each help ends with every environment variable and its default, printed from the table the
configuration code reads (gateway/config/reference.py help_text()), so a wheel installed without
the README still explains itself and the list cannot drift from the code.
"""
from __future__ import annotations

# command → (synopsis lines, description). The order is the order of `gateway --help`.
COMMANDS: dict[str, tuple[tuple[str, ...], str]] = {
    "run": (("gateway [run]",),
            "Serve with the GATEWAY_* environment and the TOML file GATEWAY_CONFIG names (the default "
            "command). Exit 0 after a drained stop (SIGTERM/SIGINT), 2 for bad configuration (one line per "
            "problem), 1 when it cannot listen or no worker could start. SIGHUP reloads the file; SIGUSR1 "
            "reopens log files."),
    "demo": (("gateway demo",),
             "Serve a bundled demo configuration with an in-process demo upstream and print ready-to-paste "
             "curl lines (a demo JWT and API key included). Needs no Redis and no files."),
    "check": (("gateway check [--dump | -T] [--bind-test]",),
              "Validate the environment and the TOML file and print the settings in force (secrets masked). "
              "Also checks that GATEWAY_HOST and GATEWAY_ADMIN_HOST resolve to addresses of this machine and "
              "that log files can be opened (nothing is created). "
              "Exit 0 when valid, 2 with one line per problem.\n"
              "  --dump, -T    also print the whole configuration in force as TOML, every default written out "
              "(as `nginx -T`)\n"
              "  --bind-test   also bind GATEWAY_PORT and GATEWAY_ADMIN_PORT now (a port already taken, or "
              "below 1024 without the privilege, is a problem)"),
    "jwt": (('gateway jwt mint --sub ID [--org ORG] [--scope "a b"] [--ttl 3600]',),
            "Print an HS256 token signed with GATEWAY_JWT_SECRET (for tests and load tests)."),
    "apikey": (('gateway apikey create --name N [--org ORG] [--user ID] [--scope "a b"] [--expires-in S]',
                "gateway apikey list",
                "gateway apikey revoke ID"),
               "Manage API keys: in Redis when GATEWAY_REDIS_URL is set (every instance applies it within 1 s), "
               "else through the running gateway's admin API (GATEWAY_ADMIN_HOST/PORT, GATEWAY_ADMIN_TOKEN). "
               "The key is printed once, as JSON {\"id\", \"key\", ...}; only its hash is stored."),
    "version": (("gateway version", "gateway --version"),
                "Print the gateway's version."),
    "help": (("gateway help [COMMAND]", "gateway help toml", "gateway [COMMAND] --help"),
             "Print this help, or one command's; `gateway help toml` lists every key of the TOML file."),
}

TOPICS = ("toml",)     # help topics that are not commands

HELP_FLAGS = frozenset({"-h", "--help"})


def _wrap(text: str, indent: str = "  ", width: int = 100) -> list[str]:
    import textwrap

    out: list[str] = []
    for para in text.split("\n"):
        sub = indent + " " * (len(para) - len(para.lstrip()))
        # An option's description continues under its text, not under the option.
        more = sub + " " * 14 if para.lstrip().startswith("-") else sub
        out += textwrap.wrap(para.strip(), width, initial_indent=sub, subsequent_indent=more) or [""]
    return out


def _footer() -> str:
    from gateway.config.reference import help_text

    return ("\n" + help_text() + "\nThe TOML file's keys: gateway help toml (docs/configuration.md in the source\n"
            "has the same, generated from the same code); gateway check --dump prints the file in force with\n"
            "every default.\n")


def usage(command: str | None = None) -> str:
    """The help of `command`, or of every command when None."""
    from gateway import __version__

    if command == "toml":
        from gateway.config.reference import toml_help_text

        return toml_help_text()
    if command is not None:
        synopsis, text = COMMANDS[command]
        lines = ["usage: " + synopsis[0], *("       " + s for s in synopsis[1:]), "", *_wrap(text, "")]
        return "\n".join(lines) + "\n" + _footer()
    lines = [f"gateway {__version__}: an API gateway configured by GATEWAY_* variables and one TOML file", "",
             "usage: gateway [COMMAND] [ARGS]   (python -m gateway is the same command)", "", "commands:"]
    for name, (synopsis, text) in COMMANDS.items():
        lines.append(f"  {name:<8}" + synopsis[0])
        lines += _wrap(text.split("\n")[0], "            ")
    return "\n".join(lines) + "\n" + _footer()


def short_usage() -> str:
    """What a wrong command line gets on stderr: the commands, and where the full help is."""
    names = " | ".join(COMMANDS)
    return f"usage: gateway [{names}] ...  (gateway --help for the commands and every variable)\n"
