"""The configuration reference cannot drift: docs/configuration.md, README's variable table and
`gateway --help` are generated from the tables the config code reads (gateway/config/reference.py).

When one of these fails, run `python -m gateway.config.reference --write` and commit the result.
"""
from __future__ import annotations

import dataclasses

import pytest

from gateway.config import VARIABLES, Settings, reference
from gateway.config import keys as toml_keys
from gateway.config.env import VARS
from gateway.config.ranges import RANGES


def test_docs_configuration_md_is_what_the_code_generates() -> None:
    assert reference.DOC.exists(), "docs/configuration.md is missing: python -m gateway.config.reference --write"
    assert reference.DOC.read_text(encoding="utf-8") == reference.document(), (
        "docs/configuration.md differs from the code: python -m gateway.config.reference --write")


def test_readme_variable_table_is_what_the_code_generates() -> None:
    text = reference.README.read_text(encoding="utf-8")
    assert reference._readme_with_table(text) == text, (
        "README.md's configuration table differs from the code: python -m gateway.config.reference --write")


def test_every_variable_is_documented_with_its_default() -> None:
    doc = reference.DOC.read_text(encoding="utf-8")
    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}
    assert set(VARS) == set(defaults), "every Settings field is a variable of the table and back"
    for var, _default, text, example, _ in reference.env_rows():
        assert text and example, f"{var} needs a doc and an example in gateway/config/env.py VARS"
        assert f"| `{var}` |" in doc
    for name, value in defaults.items():   # the typed default is what the shown one parses to
        var = VARS[name]
        if var.shown_default is not None and var.shown_default != "from the key types":
            assert var.parse(var.shown_default) == value, name


def test_every_toml_key_the_parsers_accept_is_documented() -> None:
    assert toml_keys.undocumented() == []
    doc = reference.DOC.read_text(encoding="utf-8")
    for k in toml_keys.KEYS:
        assert f"| `{k.path}` |" in doc


def test_a_key_added_to_a_parser_without_a_doc_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # The check itself must be able to fail: a parser that accepts one more key than KEYS documents.
    from gateway.config import schema

    monkeypatch.setattr(schema, "_ROUTE_KEYS", schema._ROUTE_KEYS | {"mirror"})
    assert toml_keys.undocumented() == [
        "routes[]: the parser accepts `mirror` but gateway/config/keys.py does not document it"]
    with pytest.raises(SystemExit):
        reference.document()


def test_every_numeric_key_documented_has_its_range_in_the_doc() -> None:
    doc = reference.DOC.read_text(encoding="utf-8")
    for r in RANGES.values():
        assert r.span in doc and f"`{r.key}`" in doc


def test_help_lists_every_variable_with_its_default() -> None:
    text = reference.help_text()
    for var, default, _, _, _ in reference.env_rows():
        assert (f"  {var}\n" if default == "unset" else f"  {var}={default}") in text.replace("   (secret)", "")
    assert len([line for line in text.splitlines() if line.startswith("  GATEWAY_")]) == len(VARIABLES)


def test_keys_marked_required_are_the_ones_the_parser_requires() -> None:
    import copy
    import tomllib

    from gateway.config import ConfigErrors, parse_config
    from tests.integration.test_cli_ops import FULL_TOML

    full = tomllib.loads(FULL_TOML)
    parse_config(full)                                   # valid as it is

    def drop(doc: dict, path: str) -> None:
        node: object = doc
        parts = path.replace("[]", ".0").replace("<table>", "default_user").split(".")
        for p in parts[:-1]:
            node = node[int(p)] if p.isdigit() else node[p]   # type: ignore[index]
        del node[parts[-1]]                                     # type: ignore[attr-defined]

    checked: list[str] = []
    for k in toml_keys.KEYS:
        if k.path in ("services", "routes", "quotas") or k.path.startswith("quotas.orgs") or \
                k.path.startswith("quotas.users") or k.path == "services[].targets[].weight":
            continue
        doc = copy.deepcopy(full)
        try:
            drop(doc, k.path)
        except KeyError:
            continue        # not in the sample (an optional key FULL_TOML leaves out)
        try:
            parse_config(doc)
            required = False
        except ConfigErrors as exc:
            required = any(p.endswith(": required") or ": required (" in p for p in exc.problems)
        assert required == k.required, f"{k.path}: keys.py says required={k.required}, the parser disagrees"
        checked.append(k.path)
    assert {k.path for k in toml_keys.KEYS if k.required} <= set(checked)
    assert len(checked) > 30        # the optional ones were tried too
