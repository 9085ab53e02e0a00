"""docs/migration.md names only codes, settings, commands and routes that exist, so it cannot drift silently."""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path

import orjson
import pytest

import fastws
from fastws import codes
from fastws.cli import build_parser
from fastws.config import Limits, Settings
from fastws.control import Flags
from fastws.hub import Hub
from fastws.rest import Request, RestAPI

ROOT = Path(__file__).parents[2]
DOC = (ROOT / "docs" / "migration.md").read_text()
#: every `inline code` span and fenced block of the doc
CODE = re.findall(r"`([^`\n]+)`", DOC) + re.findall(r"```[a-z]*\n(.*?)```", DOC, re.S)

#: names the doc uses that belong to no fastws module: the seed's example names, and the
#: JavaScript client's own error code (clients/js, not a server code)
ELSEWHERE = {"custom_event", "idea_created", "idea_updated", "idea_service", "recovery_failed"}


def _section(heading: str) -> str:
    return DOC.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]


def _keys(value: object) -> set[str]:
    """Every key of a JSON value, at any depth."""
    if isinstance(value, dict):
        return set(value) | {key for item in value.values() for key in _keys(item)}
    if isinstance(value, list):
        return {key for item in value for key in _keys(item)}
    return set()


def _api() -> RestAPI:
    return RestAPI(Hub(), Settings())


def _answer(request: Request) -> dict:
    response = _api().handle(request)
    return orjson.loads(response.body)  # type: ignore[union-attr]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices  # type: ignore[return-value]
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def test_error_codes_in_the_errors_table_exist_with_their_status():
    """Each code in the Errors table's first column is in codes.ERRORS, with the HTTP status the row gives."""
    table = _section("Errors and close codes").split("| close code |", 1)[0]
    rows = re.findall(r"^\| ([^|]+) \|", table, re.M)
    named = [pair for row in rows for pair in re.findall(r"(\d{3}) `([a-z_]+)`", row)]
    assert len(named) >= 20
    for status, code in named:
        assert code in codes.ERRORS, f"{code} is not an error code"
        assert codes.ERRORS[code][0] == int(status), f"{code} is {codes.ERRORS[code][0]}, not {status}"


def test_every_status_and_code_pair_in_the_doc_agrees_with_codes():
    """Anywhere in the doc, 'NNN `code`' names an error code of that HTTP status."""
    for status, code in re.findall(r"\b(\d{3}) `([a-z_]+)`", DOC):
        assert code in codes.ERRORS, f"{code} is not an error code"
        assert codes.ERRORS[code][0] == int(status), f"{code} is {codes.ERRORS[code][0]}, not {status}"


def test_every_snake_case_name_is_known_to_fastws():
    """A `snake_case` name in the doc is an error code, a setting, a flag, a REST answer's key, a query
    parameter or a client option: a code that was renamed or removed fails here."""
    info = _answer(Request("GET", "/api/websocket", {}, {"x-tenant-id": "acme"}, client="127.0.0.1"))
    status = _answer(Request("GET", "/api/websocket/status", {"detailed": "true"}, {}, client="127.0.0.1"))
    history = _answer(Request("GET", "/api/websocket/history", {}, {"x-tenant-id": "acme"}, client="127.0.0.1"))
    sources = "".join((ROOT / "fastws" / name).read_text() for name in ("rest.py", "server/app.py"))
    query_parameters = set(re.findall(r"query\.get\(\"(\w+)\"", sources))
    known = (
        set(codes.ERRORS)
        | set(Settings.__dataclass_fields__)
        | set(Limits.__dataclass_fields__)
        | set(Flags().to_json())
        | _keys(info) | _keys(status) | _keys(history)
        | query_parameters
        | set(inspect.signature(fastws.Client).parameters)
        | ELSEWHERE
    )
    named = set(re.findall(r"`([a-z][a-z0-9]*(?:_[a-z0-9]+)+)`", DOC))
    assert named, "no names found: has the doc's format changed?"
    assert named - known == set()


def test_close_codes_named_exist():
    """Every close code in the close-code table, and every 'close NNNN' in the doc, is in codes.CLOSE_CODES."""
    table = _section("Errors and close codes").split("| close code |", 1)[1]
    in_table = {int(n) for row in re.findall(r"^\| ([\d, ]+) \|", table, re.M) for n in re.findall(r"\d{4}", row)}
    assert len(in_table) >= 10
    in_text = {int(n) for n in re.findall(r"(?:close(?: code)?|closed with|closes it with)\s+`?(\d{4})\b", DOC)}
    assert in_text
    assert (in_table | in_text) - set(codes.CLOSE_CODES) == set()


def test_environment_variables_named_exist():
    """Every FASTWS_* variable the doc names is a setting's variable (Settings._ENV) or one fastws reads itself."""
    read = set()
    for path in (ROOT / "fastws").rglob("*.py"):
        read |= set(re.findall(r"environ\.get\(\"(FASTWS_\w+)\"", path.read_text()))
    named = set(re.findall(r"\bFASTWS_[A-Z0-9_]*[A-Z0-9]", DOC))
    assert named
    assert named - set(Settings._ENV.values()) - read == set()


def test_cli_commands_named_exist():
    """Every `fastws CMD [--option]` in the doc's code is a subcommand of the CLI with those options;
    `fastws flag NAME` names a flag subcommand."""
    commands = _subcommands(build_parser())
    seen = set()
    for code in CODE:
        for match in re.finditer(r"\bfastws ([a-z][a-z_-]*)((?: [^ `|;]+)*)", code):
            command, rest = match.group(1), match.group(2).split()
            assert command in commands, f"`fastws {command}` is no CLI command"
            parser = commands[command]
            if command == "flag" and rest:
                flags = _subcommands(parser)
                assert rest[0] in flags, f"`fastws flag {rest[0]}` is no flag command"
                parser = flags[rest[0]]
            for word in rest:
                option = word.strip("[]").split("=", 1)[0]
                if option.startswith("--"):
                    assert option in _options(parser), f"`fastws {command}` has no option {option}"
            seen.add(command)
    assert {"serve", "selftest", "flag", "token"} <= seen


def test_rest_routes_named_exist():
    """Every REST path the doc names is a route of RestAPI, and 'METHOD /path' a method that route serves."""
    routes = _api()._routes
    paths = set(re.findall(r"(?<![A-Za-z_])(/api/[a-z/_-]*[a-z]|/healthz|/readyz)", DOC))
    assert {"/api/websocket", "/api/websocket/status", "/api/websocket/history", "/healthz"} <= paths
    for path in paths:
        assert path in routes, f"{path} is no route"
    pairs = re.findall(r"\b(GET|POST|PUT|DELETE) `?(/[a-z/_-]*[a-z])", DOC)
    assert len(pairs) >= 6
    for method, path in pairs:
        if path in ("/dashboard", "/websocket-test"):
            continue
        assert method in routes.get(path, {}), f"{method} {path} is not served"


def test_dashboard_paths_named_are_served():
    """The page's paths the doc names (/dashboard, /websocket-test) are the dashboard's."""
    assets = pytest.importorskip("fastws.assets", reason="the dashboard's files are not part of this tree")
    named = set(re.findall(r"(?<![A-Za-z_])/(?:dashboard|websocket-test)\b", DOC))
    assert named and named <= set(assets.DASHBOARD_PATHS)
