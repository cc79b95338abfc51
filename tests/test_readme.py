"""README.md is how people meet authproxy; these tests keep what it says true.

- The top: the title, then one code block with exactly `make demo` and `make test`; every `make`
  target the README names exists, and the apt packages `make test` installs are named.
- The configuration reference: one table per section, checked against the config models (every
  section, every key, no extra ones, each default, and the type column for booleans, lists and
  choices); `AUTHPROXY_...` variable names exist.
- Every TOML config in the README (a block with `[server]`) passes `authproxy check-config`, with its
  secrets filled in through the environment; TOML fragments validate on top of a minimal config.
- Every `authproxy ...` line in a shell block parses with the real argument parsers; `gen-secret`,
  `gen-signing-key` and `check-config` really run. Each `authproxy explain` example is followed by the
  block of its output, and running it against the README config it names prints exactly that.
- The routes, metrics, stripped headers, fake-CentralAuth options and test-control API the README
  documents exist, and everything of theirs exists in the README; so do the repository files it names.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import secrets
import shlex
import textwrap
import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo

from authproxy import cli
from authproxy.config import Config, RouteConfig
from authproxy.config_checks import is_placeholder

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TEXT = README.read_text(encoding="utf-8")

SHELL_LANGS = frozenset({"sh", "bash", "shell", "console", "zsh"})
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
SECTION_HEADING = re.compile(r"^#{2,6}\s.*?`(\[\[?)([a-z_]+)\]\]?`")
# `[routes]` (a table) and `[[routes]]` (the route table) are two shapes of one key; the reference
# documents them apart, the second as the section ROUTE_TABLE.
ROUTE_TABLE = "routes[]"
REQUIRED = "(required)"
# Shell expansions (`$(cat file)`, `$VAR`) become this word before the line is split, then a valid secret.
PLACEHOLDER = "SHELLVALUE"
EXPANSION = re.compile(r"\$\([^()]*\)|\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


# --- reading the README --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int  # the line of the opening fence, 1-based


def parse_markdown(text: str) -> tuple[list[Block], list[str]]:
    """The fenced code blocks, and the prose lines with code blanked out (so line numbers still hold)."""
    blocks: list[Block] = []
    prose: list[str] = []
    fence: str | None = None
    lang, start = "", 0
    body: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if fence is None:
            match = FENCE.match(line)
            if match:
                fence, lang, start, body = match.group(2), match.group(3).lower(), number, []
                prose.append("")
            else:
                prose.append(line)
            continue
        stripped = line.strip()
        if stripped.startswith(fence) and not stripped.strip(fence[0]):
            blocks.append(Block(lang, textwrap.dedent("\n".join(body)), start))
            fence = None
        else:
            body.append(line)
        prose.append("")
    assert fence is None, f"README.md: the code block opened on line {start} is never closed"
    return blocks, prose


def split_row(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip().removeprefix("|").removesuffix("|"))
    return [cell.strip().replace("\\|", "|") for cell in cells]


@dataclass(frozen=True)
class Table:
    section: str | None  # the `[section]` named by the heading above the table, if any
    header: list[str]
    rows: list[list[str]]
    line: int


def parse_tables(prose: list[str]) -> list[Table]:
    tables: list[Table] = []
    section: str | None = None
    header: list[str] | None = None
    rows: list[list[str]] = []
    start = 0
    for number, line in enumerate([*prose, ""], 1):
        if line.lstrip().startswith("|"):
            cells = split_row(line)
            if header is None:
                header, rows, start = [cell.lower() for cell in cells], [], number
            elif not all(re.fullmatch(r":?-{3,}:?", cell) for cell in cells):
                rows.append(cells)
            continue
        if header is not None:
            tables.append(Table(section, header, rows, start))
            header = None
        if line.startswith("#"):
            match = SECTION_HEADING.match(line)
            section = None
            if match:
                section = match.group(2)
                if section == "routes" and match.group(1) == "[[":
                    section = ROUTE_TABLE
    return tables


BLOCKS, PROSE = parse_markdown(TEXT)
TABLES = parse_tables(PROSE)


def unquote(cell: str) -> str:
    return cell[1:-1] if len(cell) > 1 and cell.startswith("`") and cell.endswith("`") else cell


def first_cells(pattern: str) -> list[tuple[re.Match[str], Table]]:
    """Table rows whose first cell matches `pattern`, with their table."""
    found = []
    for table in TABLES:
        for row in table.rows:
            match = re.match(pattern, row[0])
            if match:
                found.append((match, table))
    return found


def toml_or_none(text: str) -> dict[str, Any] | None:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None


TOML_BLOCKS = [block for block in BLOCKS if block.lang == "toml"]
CONFIG_BLOCKS = [block for block in TOML_BLOCKS if "server" in (toml_or_none(block.text) or {})]
FRAGMENT_BLOCKS = [block for block in TOML_BLOCKS if block not in CONFIG_BLOCKS]


def block_id(block: Block) -> str:
    return f"line{block.line}"


# --- running the CLI in-process ------------------------------------------------------------------------


def run_cli(argv: list[str], main: Callable[[list[str]], int] = cli.main) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of one in-process run (argparse's exits included)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def generated_secret() -> str:
    code, out, _ = run_cli(["gen-secret"])
    assert code == 0
    return out.strip()


def generated_signing_key() -> str:
    code, out, _ = run_cli(["gen-signing-key"])
    assert code == 0
    return out.strip()


pytestmark = pytest.mark.usefixtures("no_authproxy_env")


# --- configs -------------------------------------------------------------------------------------------


def section_models() -> dict[str, type[BaseModel]]:
    models: dict[str, type[BaseModel]] = {}
    for name, field in Config.model_fields.items():
        annotation = field.annotation
        if get_origin(annotation) is list:
            annotation = get_args(annotation)[0]
        assert isinstance(annotation, type) and issubclass(annotation, BaseModel), name
        models[name] = annotation
    models[ROUTE_TABLE] = RouteConfig
    return models


MODELS = section_models()


def env_name(section: str, key: str) -> str:
    return f"AUTHPROXY_{section.upper()}__{key.upper()}"


def secret_file(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content + "\n", encoding="utf-8")
    return path


def fill_secrets(data: dict[str, Any], tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    """Give the snippet's secret keys real values through the environment, which wins over the file.

    Only keys the snippet itself sets are filled: a config that forgets its secrets must still fail.
    """
    centralauth, session = data.get("centralauth", {}), data.get("session", {})
    cookie_secret = generated_secret()
    if is_placeholder(str(centralauth.get("client_id", ""))):
        # YOUR-ORGANIZATION-ID is the reader's to replace; check-config refuses it as it stands.
        env.setenv(env_name("centralauth", "client_id"), str(uuid.uuid4()))
    if "client_secret" in centralauth:
        env.setenv(env_name("centralauth", "client_secret"), secrets.token_hex(32))
    if "client_secret_file" in centralauth:
        path = secret_file(tmp_path, "client_secret", secrets.token_hex(32))
        env.setenv(env_name("centralauth", "client_secret_file"), str(path))
    if "cookie_secrets" in session:
        env.setenv(env_name("session", "cookie_secrets"), json.dumps([cookie_secret]))
    if "cookie_secret_file" in session:
        path = secret_file(tmp_path, "cookie_secret", cookie_secret)
        env.setenv(env_name("session", "cookie_secret_file"), str(path))


def write_config(block: Block, tmp_path: Path, env: pytest.MonkeyPatch) -> Path:
    data = toml_or_none(block.text)
    assert data is not None, f"README.md line {block.line}: not valid TOML"
    fill_secrets(data, tmp_path, env)
    path = tmp_path / f"readme-line{block.line}.toml"
    path.write_text(block.text, encoding="utf-8")
    return path


def minimal_config() -> dict[str, Any]:
    return {
        "server": {"public_url": "https://app.example.com"},
        "centralauth": {"client_id": "org-1", "client_secret": secrets.token_hex(32)},
        "session": {"cookie_secrets": [generated_secret()]},
        "upstreams": [{"url": "http://127.0.0.1:8080"}],
    }


def test_the_readme_has_configs_to_check() -> None:
    assert CONFIG_BLOCKS, "the README shows no complete config (a ```toml block with [server])"


@pytest.mark.parametrize("block", TOML_BLOCKS, ids=block_id)
def test_every_toml_block_is_valid_toml(block: Block) -> None:
    try:
        tomllib.loads(block.text)
    except tomllib.TOMLDecodeError as exc:
        pytest.fail(f"README.md line {block.line}: invalid TOML: {exc}")


@pytest.mark.parametrize("block", CONFIG_BLOCKS, ids=block_id)
def test_every_config_passes_check_config(
    block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(block, tmp_path, monkeypatch)
    code, out, err = run_cli(["check-config", "-c", str(path)])
    assert code == 0, f"README.md line {block.line}: `authproxy check-config` says:\n{err}"
    assert "valid" in out


@pytest.mark.parametrize("block", FRAGMENT_BLOCKS, ids=block_id)
def test_every_config_fragment_is_valid_on_top_of_a_minimal_config(block: Block, tmp_path: Path) -> None:
    fragment = toml_or_none(block.text)
    assert fragment is not None, f"README.md line {block.line}: not valid TOML"
    merged = minimal_config()
    for section, value in fragment.items():
        merged[section] = {**merged.get(section, {}), **value} if isinstance(value, dict) else value
    if "client_secret_file" in fragment.get("centralauth", {}):
        merged["centralauth"].pop("client_secret")
        path = secret_file(tmp_path, "client_secret", secrets.token_hex(32))
        merged["centralauth"]["client_secret_file"] = str(path)
    if "cookie_secret_file" in fragment.get("session", {}):
        path = secret_file(tmp_path, "cookie_secret", generated_secret())
        merged["session"]["cookie_secret_file"] = str(path)
    if "jwt_signing_key_file" in fragment.get("headers", {}):
        path = secret_file(tmp_path, "signing.pem", generated_signing_key())
        merged["headers"]["jwt_signing_key_file"] = str(path)
    try:
        Config(**merged)
    except ValidationError as exc:
        pytest.fail(f"README.md line {block.line}: this fragment is not a valid config:\n{exc}")


# --- the configuration reference -----------------------------------------------------------------------


def reference() -> dict[str, dict[str, dict[str, str]]]:
    """section -> key -> {column: cell} from the tables under `[section]` headings."""
    documented: dict[str, dict[str, dict[str, str]]] = {}
    for table in TABLES:
        if table.section is None or "key" not in table.header or "default" not in table.header:
            continue
        assert table.section not in documented, f"[{table.section}] has two reference tables"
        keys: dict[str, dict[str, str]] = {}
        for row in table.rows:
            assert len(row) == len(table.header), f"README.md line {table.line}: row {row} has wrong width"
            cells = dict(zip(table.header, row, strict=True))
            key = unquote(cells["key"])
            assert key not in keys, f"[{table.section}] documents `{key}` twice"
            keys[key] = cells
        documented[table.section] = keys
    return documented


REFERENCE = reference()


def documented_default(section: str, key: str, cell: str) -> Any:
    text = unquote(cell.strip())
    if text.lower().strip("()") == "required":
        return REQUIRED
    if text.lower().strip("()") == "unset":
        return None
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        pytest.fail(f"[{section}] {key}: default {cell!r} is neither a TOML value, (required) nor (unset)")


def model_default(field: FieldInfo) -> Any:
    if field.is_required():
        return REQUIRED
    value = field.get_default(call_default_factory=True)
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Path):
        return str(value)
    return value


def same_value(documented: Any, actual: Any) -> bool:
    if isinstance(documented, bool) or isinstance(actual, bool):
        return documented is actual
    return bool(documented == actual)


def test_the_reference_documents_exactly_the_config_sections() -> None:
    missing = sorted(set(MODELS) - set(REFERENCE))
    extra = sorted(set(REFERENCE) - set(MODELS))
    assert not missing, f"sections without a reference table in README.md: {missing}"
    assert not extra, f"README.md documents sections the config does not have: {extra}"


@pytest.mark.parametrize("section", sorted(MODELS))
def test_the_reference_matches_the_config_model(section: str) -> None:
    model, documented = MODELS[section], REFERENCE.get(section, {})
    missing = sorted(set(model.model_fields) - set(documented) - {"table"})
    extra = sorted(set(documented) - set(model.model_fields))
    assert not missing, f"[{section}] keys missing from README.md: {missing}"
    assert not extra, f"[{section}] keys in README.md that the config does not have: {extra}"
    for key, field in model.model_fields.items():
        if (section, key) == ("routes", "table"):
            continue  # the `[[routes]]` shape, documented as its own section
        cells = documented[key]
        default = documented_default(section, key, cells["default"])
        actual = model_default(field)
        assert same_value(default, actual), f"[{section}] {key}: README says {default!r}, code has {actual!r}"
        kind = cells.get("type", "").lower()
        assert kind, f"[{section}] {key}: no type"
        assert cells.get("meaning", "x").strip(), f"[{section}] {key}: no meaning"
        annotation = field.annotation
        if annotation is bool:
            assert "bool" in kind, f"[{section}] {key} is a boolean; README says {kind!r}"
        if get_origin(annotation) is list:
            assert "list" in kind, f"[{section}] {key} is a list; README says {kind!r}"
        if get_origin(annotation) is Literal:
            row = " ".join(cells.values())
            for choice in get_args(annotation):
                spelled = f'"{choice}"' if isinstance(choice, str) else f"`{choice}`"
                assert spelled in row, f"[{section}] {key}: README does not name the choice {choice!r}"


def test_environment_overrides_are_documented_as_the_config_reads_them() -> None:
    assert Config.model_config.get("env_prefix") == "AUTHPROXY_"
    assert Config.model_config.get("env_nested_delimiter") == "__"
    assert "AUTHPROXY_<SECTION>__<KEY>" in TEXT
    for name in sorted(set(re.findall(r"\bAUTHPROXY_[A-Z0-9_]+", TEXT))):
        section, _, key = name.removeprefix("AUTHPROXY_").partition("__")
        assert section.lower() in MODELS, f"{name}: there is no [{section.lower()}] section"
        if key:
            fields = MODELS[section.lower()].model_fields
            assert key.lower() in fields, f"{name}: [{section.lower()}] has no key {key.lower()!r}"


# --- shell command lines -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    words: tuple[str, ...]  # the argv after `authproxy`
    env: tuple[tuple[str, str], ...]  # AUTHPROXY_* variables set earlier in the block or on the line
    line: int
    config: Block | None  # the TOML config the command's `-c` file stands for, if not a repo file

    def __str__(self) -> str:
        return f"README.md line {self.line}: `authproxy {' '.join(self.words)}`"


def shell_lines(block: Block) -> Iterator[tuple[int, list[list[str]]]]:
    """(line number, simple commands as word lists) for each line of a shell block."""
    lines = block.text.splitlines()
    index = 0
    while index < len(lines):
        number, line = block.line + 1 + index, lines[index]
        while line.endswith("\\") and index + 1 < len(lines):
            index += 1
            line = line[:-1] + " " + lines[index]
        index += 1
        line = line.strip().removeprefix("$ ")
        if not line or line.startswith("#"):
            continue
        lexer = shlex.shlex(EXPANSION.sub(PLACEHOLDER, line), posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        commands: list[list[str]] = [[]]
        words = list(lexer)
        position = 0
        while position < len(words):
            word = words[position]
            if set(word) <= set("<>"):
                position += 2  # a redirection and its target
                continue
            if set(word) <= set(";&|()"):
                commands.append([])
            else:
                commands[-1].append(word)
            position += 1
        yield number, [command for command in commands if command]


def config_name(block: Block) -> str | None:
    """The `name.toml` mentioned just above a config block (`authproxy.toml`:), if any."""
    seen = 0
    for line in reversed(PROSE[: block.line - 1]):
        if not line.strip():
            continue
        match = re.search(r"`([\w./-]+\.toml)`", line)
        if match:
            return match.group(1)
        seen += 1
        if seen == 3:
            return None
    return None


def authproxy_commands() -> list[Command]:
    named = {name: block for block in CONFIG_BLOCKS if (name := config_name(block))}
    found: list[Command] = []
    latest: Block | None = None
    for block in BLOCKS:
        if block in CONFIG_BLOCKS:
            latest = block
        if block.lang not in SHELL_LANGS:
            continue
        exported: dict[str, str] = {}
        for number, commands in shell_lines(block):
            for words in commands:
                if words[0] in ("export", "env", "sudo", "exec"):
                    words = words[1:]
                inline = dict(exported)
                while words and ASSIGNMENT.match(words[0]):
                    name, _, value = words.pop(0).partition("=")
                    inline[name] = value
                if not words:
                    exported.update(inline)
                    continue
                if words[0] == "authproxy" or words[0].endswith("/authproxy"):
                    argv = words[1:]
                elif re.fullmatch(r"python3?", words[0]) and words[1:3] == ["-m", "authproxy"]:
                    argv = words[3:]
                else:
                    continue
                env = tuple((k, v) for k, v in inline.items() if k.upper().startswith("AUTHPROXY_"))
                config = next((named[word] for word in argv if word in named), latest)
                found.append(Command(tuple(argv), env, number, config))
    return found


COMMANDS = authproxy_commands()


def resolve_config(command: Command, path: str, tmp_path: Path, env: pytest.MonkeyPatch) -> Path:
    """A repository file as it is; otherwise the README's config of that name (or the one above it).

    The block's `AUTHPROXY_*` variables apply on top; a `*_FILE` one gets a real file with a valid secret.
    """
    candidate = Path(path) if Path(path).is_absolute() else ROOT / path
    if candidate.is_file():
        config = candidate
    else:
        assert command.config is not None, (
            f"{command}: {path} is neither a repo file nor a config shown above"
        )
        config = write_config(command.config, tmp_path, env)
    for name, value in command.env:
        if name.upper().endswith("_FILE"):
            content = generated_secret() if "COOKIE" in name.upper() else secrets.token_hex(32)
            value = str(secret_file(tmp_path, name.lower(), content))
        env.setenv(name, value)
    return config


def test_the_readme_shows_authproxy_commands() -> None:
    subcommands = {command.words[0] for command in COMMANDS if command.words}
    assert {"gen-secret", "check-config", "serve", "devidp"} <= subcommands


def _recorder(calls: list[tuple[Any, ...]], name: str) -> Callable[..., int]:
    """A stand-in for a command: records its arguments, starts nothing, succeeds."""

    def record(*args: Any) -> int:
        calls.append((name, *args))
        return 0

    return record


def parse_command(argv: list[str], env: pytest.MonkeyPatch) -> tuple[int, str, list[tuple[Any, ...]]]:
    """Exit code, stderr and the recorded calls of a run of the real parsers that starts nothing."""
    calls: list[tuple[Any, ...]] = []
    if argv[0] == "devidp":
        from authproxy.devidp.cli import build_parser

        def devidp(args: list[str]) -> int:
            calls.append(("devidp", build_parser().parse_args(args)))
            return 0

        code, _, err = run_cli(argv[1:], devidp)
        return code, err, calls
    with env.context() as patch:
        for name in ("serve", "demo", "check_config"):
            patch.setattr(cli, name, _recorder(calls, name))

        def explain(args: Any) -> int:
            calls.append(("explain", args.config))
            return 0

        patch.setattr(cli, "explain", explain)
        code, _, err = run_cli(argv)
    return code, err, calls


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: f"line{command.line}")
def test_every_authproxy_command_line_parses(
    command: Command, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = [word.replace(PLACEHOLDER, secrets.token_hex(32)) for word in command.words]
    assert argv, f"{command}: no subcommand"
    code, err, calls = parse_command(argv, monkeypatch)
    assert code == 0, f"{command}: {err.strip()}"
    # Spelled as --help spells them: argparse would also accept an abbreviation such as `--conf`.
    _, help_text, _ = run_cli(["--help"] if argv[0].startswith("-") else [argv[0], "--help"])
    for flag in (word.partition("=")[0] for word in argv if word.startswith("-")):
        spelled = re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text)
        assert spelled, f"{command}: {flag} is not spelled as in --help"

    if argv[0] == "devidp":
        from authproxy.devidp.settings import SECRET_LENGTH

        secret = calls[0][1].client_secret
        assert secret is None or len(secret) == SECRET_LENGTH, f"{command}: the secret is not 64 characters"
    elif argv[0] in ("serve", "check-config", "explain"):
        config = resolve_config(command, calls[0][1], tmp_path, monkeypatch)
        code, _, err = run_cli(["check-config", "-c", str(config)])
        assert code == 0, f"{command}: check-config of that config says:\n{err}"
    elif argv[0] == "gen-secret":
        code, out, _ = run_cli(argv)
        assert code == 0 and re.fullmatch(r"[A-Za-z0-9_-]{32,}\n", out), f"{command}: printed {out!r}"
    elif argv[0] == "gen-signing-key":
        from authproxy.core.signing_keys import read_signing_keys

        code, out, _ = run_cli(argv)
        assert code == 0 and len(read_signing_keys(out.encode())) == 1, f"{command}: printed {out!r}"


# --- `authproxy explain` examples ----------------------------------------------------------------------

# The languages of the block that shows an example's output, right after the shell block of its command.
OUTPUT_LANGS = frozenset({"text", "json"})


def shell_block_of(command: Command) -> int:
    """The index in BLOCKS of the shell block that holds `command`'s line."""
    for index, block in enumerate(BLOCKS):
        last = block.line + len(block.text.splitlines())
        if block.lang in SHELL_LANGS and block.line < command.line <= last:
            return index
    raise AssertionError(f"{command}: not inside a shell block")


@dataclass(frozen=True)
class Example:
    command: Command
    output: Block

    def __str__(self) -> str:
        return str(self.command)


def explain_examples() -> list[Example]:
    """Every `authproxy explain` command in the README with the output block that follows its shell
    block; the shell block must hold that one command and nothing else, so the output is unambiguous."""
    found = []
    for command in COMMANDS:
        if command.words[:1] != ("explain",):
            continue
        index = shell_block_of(command)
        others = [other for other in COMMANDS if other is not command and shell_block_of(other) == index]
        assert not others, f"{command}: give an explain example a shell block of its own"
        following = BLOCKS[index + 1] if index + 1 < len(BLOCKS) else None
        assert following is not None and following.lang in OUTPUT_LANGS, (
            f"{command}: not followed by a ```text or ```json block with its output"
        )
        found.append(Example(command, following))
    return found


EXPLAIN_EXAMPLES = explain_examples()


def normalised(output: str) -> list[str]:
    """Output lines without trailing whitespace, and without blank lines at the end: the only
    differences between a README block and the command's output that the comparison forgives."""
    lines = [line.rstrip() for line in output.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def test_the_readme_shows_explain_examples_in_both_formats() -> None:
    languages = {example.output.lang for example in EXPLAIN_EXAMPLES}
    assert languages == {"text", "json"}, f"explain examples with outputs in {sorted(languages)}"
    assert all("--json" in e.command.words for e in EXPLAIN_EXAMPLES if e.output.lang == "json")


@pytest.mark.parametrize("example", EXPLAIN_EXAMPLES, ids=lambda example: f"line{example.command.line}")
def test_every_explain_example_prints_what_the_readme_shows(
    example: Example, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = list(example.command.words)
    flag = next((i for i, word in enumerate(argv) if word in ("-c", "--config")), None)
    assert flag is not None and flag + 1 < len(argv), f"{example}: no -c FILE"
    config = resolve_config(example.command, argv[flag + 1], tmp_path, monkeypatch)
    assert example.command.config is not None and config_name(example.command.config) == argv[flag + 1], (
        f"{example}: {argv[flag + 1]} must be a config the README shows and names (`{argv[flag + 1]}`:)"
    )
    argv[flag + 1] = str(config)
    code, out, err = run_cli(argv)
    assert code == 0, f"{example}: exit {code}: {err.strip()}"
    if example.output.lang == "json":
        json.loads(example.output.text)  # the README block is itself valid JSON
    assert normalised(out) == normalised(example.output.text), (
        f"{example}: the output differs from the block on README.md line {example.output.line}:\n{out}"
    )


# --- make ----------------------------------------------------------------------------------------------

MAKEFILE = (ROOT / "Makefile").read_text(encoding="utf-8")


def make_targets_used() -> set[str]:
    used: set[str] = set()
    for block in BLOCKS:
        if block.lang in SHELL_LANGS:
            for _, commands in shell_lines(block):
                for words in commands:
                    if words[0] == "make":
                        used |= {word for word in words[1:] if not word.startswith("-") and "=" not in word}
    for match in re.finditer(r"`make ([a-z][\w.-]*(?: [a-z][\w.-]*)*)`", "\n".join(PROSE)):
        used |= set(match.group(1).split())
    return used


def test_the_readme_opens_with_the_title_and_exactly_make_demo_and_make_test() -> None:
    lines = TEXT.splitlines()
    first_fence = next(index for index, line in enumerate(lines) if FENCE.match(line))
    before = [line for line in lines[:first_fence] if line.strip()]
    assert len(before) == 1 and before[0].startswith("# "), f"only the title may precede them: {before}"
    commands = [re.sub(r"(^|\s)#.*", "", line).strip() for line in BLOCKS[0].text.splitlines()]
    assert [command for command in commands if command] == ["make demo", "make test"]


def test_every_make_target_the_readme_names_exists() -> None:
    targets = set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", MAKEFILE, re.MULTILINE))
    used = make_targets_used()
    assert {"demo", "test"} <= used
    assert used <= targets, f"make targets in README.md that the Makefile lacks: {sorted(used - targets)}"


def test_the_packages_make_test_installs_are_named() -> None:
    packages: set[str] = set()
    for match in re.finditer(r"apt-get install ([^;}\n]*)", MAKEFILE):
        packages |= {word for word in match.group(1).split() if not word.startswith(("-", "$"))}
    missing = sorted(package for package in packages if f"`{package}`" not in TEXT)
    assert not missing, f"README.md does not say that `make test` installs {missing}"


# --- routes, metrics, headers, the fake ----------------------------------------------------------------

METHODS = "GET|POST|PUT|PATCH|DELETE"
ROUTE_CELL = rf"`((?:{METHODS})(?:/(?:{METHODS}))*) (/[^`?\s]*)"


def app_routes(app: Any) -> set[tuple[str, str]]:
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method not in ("HEAD", "*") and route.resource is not None
    }


def test_the_documented_routes_are_the_real_ones() -> None:
    from authproxy.app import build_app
    from authproxy.devidp import DevIdpSettings
    from authproxy.devidp import make_app as make_idp_app

    # Every optional route switched on, so that each documented one exists.
    config = minimal_config()
    config["centralauth"] = {**config["centralauth"], "compat_routes": True}
    proxy = app_routes(build_app(Config(**config)))
    fake = app_routes(make_idp_app(DevIdpSettings()))
    documented = {
        (method, match.group(2))
        for match, _ in first_cells(ROUTE_CELL)
        for method in match.group(1).split("/")
    }
    unknown = sorted(documented - proxy - fake)
    assert not unknown, f"README.md documents routes that do not exist: {unknown}"
    undocumented = sorted((proxy | {r for r in fake if r[1].startswith("/_devidp/")}) - documented)
    assert not undocumented, f"routes missing from README.md's tables: {undocumented}"


def test_the_documented_metrics_are_the_real_ones() -> None:
    from authproxy.metrics import Metrics

    exposed = {
        family.name + "_total" if family.type == "counter" else family.name
        for family in Metrics().registry.collect()
    }
    documented = {match.group(1) for match, _ in first_cells(r"`(authproxy_[a-z_]+)")}
    assert documented == exposed, (
        f"missing from README.md: {sorted(exposed - documented)}; not exposed: {sorted(documented - exposed)}"
    )


def test_every_stripped_header_is_named() -> None:
    from authproxy.core.headers import HOP_BY_HOP, IDENTITY, IDENTITY_PREFIXES

    lowered = TEXT.lower()
    missing = sorted(name for name in IDENTITY | HOP_BY_HOP if f"`{name}`" not in lowered)
    missing += [f"{prefix}*" for prefix in IDENTITY_PREFIXES if f"`{prefix}*`" not in lowered]
    assert not missing, f"headers the proxy strips that README.md does not name: {missing}"


def options(argv: list[str]) -> set[str]:
    code, out, _ = run_cli([*argv, "--help"])
    assert code == 0
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", out)) - {"--help"}


def test_the_options_of_demo_and_devidp_are_documented_and_real() -> None:
    real = options(["devidp"]) | options(["demo"])
    undocumented = sorted(o for o in real if not re.search(rf"(?<![\w-]){o}(?![\w-])", TEXT))
    assert not undocumented, f"options missing from README.md: {undocumented}"
    documented = {match.group(1) for match, _ in first_cells(r"`(--[a-z][a-z-]*)")}
    assert documented, "README.md has no option table for the fake CentralAuth"
    assert documented <= real, f"README.md documents options that do not exist: {sorted(documented - real)}"


def test_the_repository_files_the_readme_names_exist() -> None:
    named = re.findall(
        r"`((?:deploy|tests|authproxy|bench)/[\w./-]*|Dockerfile|config\.example\.toml)`", TEXT
    )
    assert named
    missing = sorted({path for path in named if not (ROOT / path).exists()})
    assert not missing, f"README.md names files that do not exist: {missing}"


def test_config_example_toml_has_every_key_as_the_readme_says() -> None:
    assert "`config.example.toml` is a commented copy of every key" in " ".join(TEXT.split())
    example = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    tables = re.split(r"^\[\[?([a-z_]+)\]\]?\s*$", example, flags=re.MULTILINE)
    present = {
        name: set(re.findall(r"^#? ?([a-z_]+) =", body, re.MULTILINE))
        for name, body in zip(tables[1::2], tables[2::2], strict=True)
    }
    # The `[[routes]]` keys are commented lines under `[routes]`: a file holds one shape or the other.
    missing = sorted(
        f"{section}.{key}"
        for section, model in MODELS.items()
        for key in model.model_fields
        if (section, key) != ("routes", "table")
        and key not in present.get("routes" if section == ROUTE_TABLE else section, set())
    )
    assert not missing, f"config.example.toml lacks {missing}"
