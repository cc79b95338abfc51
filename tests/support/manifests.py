"""Deployment files under test: a Helm template renderer, YAML loading, and a Pod's files on local disk.

`render_chart()` renders a Helm chart without Helm. It implements the part of Go's text/template and of
Helm's and Sprig's functions that deploy/helm/authproxy uses — actions with `{{-`/`-}}` trimming,
`if`/`else`/`range`/`with`/`define`/`include`, variables, pipelines, parentheses — with Helm's
semantics for them (missing keys render empty, `range` over a map goes in key order, `toJson` is Go's
encoder). Anything else is an error, not a guess: a template that uses a construct outside that subset
fails here rather than rendering differently from Helm. tests/test_deploy.py compares its output with
real Helm's when the helm-python-sdk package is installed.

`PodFiles` writes what a container would see — its ConfigMap and Secret volumes or compose bind
mounts and secrets, its environment — under a temporary directory, so the config file embedded in a
manifest can be checked by authproxy itself with every file path it names pointing at the mounted keys.

`dockerfile_stages()` and `DockerIgnore` read the Dockerfile and .dockerignore the way Docker does, for
the parts the tests rely on (instructions with line continuations; last-match-wins ignore patterns that
also apply to parent directories).
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

# --- YAML ------------------------------------------------------------------------------------------------


def load_documents(text: str) -> list[dict[str, Any]]:
    """Every non-empty document of a multi-document YAML text."""
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    matches = [c for c in containers if c["name"] == name]
    assert len(matches) == 1, f"no container {name!r} in {deployment['metadata']['name']}"
    return matches[0]


# --- a Pod's files on local disk ---------------------------------------------------------------------


@dataclass
class PodFiles:
    """The files and environment one container of a Deployment sees, laid out under `root`."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)
    mounts: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def materialize(
        cls,
        docs: list[dict[str, Any]],
        deployment: dict[str, Any],
        container_name: str,
        root: Path,
        fill: Callable[[str, str], str] = lambda key, value: value,
    ) -> PodFiles:
        """Write the container's ConfigMap and Secret volumes; `fill(key, value)` replaces placeholders."""
        pod = deployment["spec"]["template"]["spec"]
        spec = container(deployment, container_name)
        volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
        files = cls(root)
        for mount in spec.get("volumeMounts", []):
            target = root / mount["mountPath"].lstrip("/")
            target.mkdir(parents=True, exist_ok=True)
            files.mounts[mount["mountPath"]] = target
            for key, value in _volume_items(docs, volumes[mount["name"]]).items():
                (target / key).write_text(fill(key, value), encoding="utf-8")
        for variable in spec.get("env", []):
            if "value" in variable:
                files.env[variable["name"]] = str(variable["value"])
            else:
                ref = variable["valueFrom"]["secretKeyRef"]
                secret = find(docs, "Secret", ref["name"])
                files.env[variable["name"]] = fill(ref["key"], secret["stringData"][ref["key"]])
        return files

    @classmethod
    def from_compose(
        cls, compose: dict[str, Any], service_name: str, compose_dir: Path, root: Path
    ) -> PodFiles:
        """The read-only bind mounts and file-based secrets of a compose service, and its environment."""
        service = compose["services"][service_name]
        files = cls(root, env={key: str(value) for key, value in service.get("environment", {}).items()})
        mounts: list[tuple[Path, str]] = []
        for volume in service.get("volumes", []):
            source, target, *_ = volume.split(":")
            mounts.append((compose_dir / source, target))
        for secret in service.get("secrets", []):
            name = secret if isinstance(secret, str) else secret["source"]
            target = f"/run/secrets/{name}" if isinstance(secret, str) else secret.get("target", name)
            mounts.append((compose_dir / compose["secrets"][name]["file"], target))
        for source, target in mounts:
            local = root / target.lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(source.read_bytes())
            files.mounts[target] = local
        return files

    def local(self, container_path: str) -> Path:
        """Where a path inside the container lives here (it must be under one of the mounts)."""
        for mount_path, local in sorted(self.mounts.items(), key=lambda item: -len(item[0])):
            if container_path == mount_path or container_path.startswith(mount_path.rstrip("/") + "/"):
                return local / container_path[len(mount_path) :].lstrip("/")
        raise AssertionError(f"{container_path} is not on any volume mounted in the container")

    def rewrite(self, text: str) -> str:
        """`text` with every quoted absolute path under a mount pointed at its local copy."""
        return re.sub(r'"(/[^"]*)"', lambda m: self._rewrite_path(m.group(0), m.group(1)), text)

    def _rewrite_path(self, quoted: str, path: str) -> str:
        if not any(path == mount or path.startswith(mount.rstrip("/") + "/") for mount in self.mounts):
            return quoted
        return json.dumps(str(self.local(path)))


def _volume_items(docs: list[dict[str, Any]], volume: dict[str, Any]) -> dict[str, str]:
    if "configMap" in volume:
        return dict(find(docs, "ConfigMap", volume["configMap"]["name"])["data"])
    if "secret" in volume:
        return dict(find(docs, "Secret", volume["secret"]["secretName"])["stringData"])
    assert "emptyDir" in volume, f"unexpected volume type in {volume}"
    return {}


# --- Dockerfile and .dockerignore ----------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]]

    def all(self, instruction: str) -> list[str]:
        return [args for op, args in self.instructions if op == instruction]


def dockerfile_stages(text: str) -> list[Stage]:
    """The build stages, each with its instructions as (UPPERCASE NAME, arguments on one line)."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped, as Docker does
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    stages: list[Stage] = []
    for line in lines:
        op, _, args = line.partition(" ")
        op, args = op.upper(), " ".join(args.split())
        if op == "FROM":
            match = re.fullmatch(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            assert match, f"cannot read FROM {args}"
            stages.append(Stage(match.group(1), match.group(2), []))
        elif stages:
            stages[-1].instructions.append((op, args))
    return stages


class DockerIgnore:
    """Docker's .dockerignore: the last matching pattern decides, and a pattern matching a directory
    also covers everything under it."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            include = line.startswith("!")
            pattern = line.removeprefix("!").strip().strip("/")
            self.rules.append((include, re.compile(self._regex(pattern))))

    @staticmethod
    def _regex(pattern: str) -> str:
        out, index = "", 0
        while index < len(pattern):
            if pattern.startswith("**/", index):
                out, index = out + "(?:.*/)?", index + 3
            elif pattern.startswith("**", index):
                out, index = out + ".*", index + 2
            elif pattern[index] == "*":
                out, index = out + "[^/]*", index + 1
            elif pattern[index] == "?":
                out, index = out + "[^/]", index + 1
            elif pattern[index] == "[":
                end = pattern.index("]", index)
                out, index = out + pattern[index : end + 1], end + 1
            else:
                out, index = out + re.escape(pattern[index]), index + 1
        return out

    def excluded(self, path: str) -> bool:
        parts = path.split("/")
        candidates = ["/".join(parts[: count + 1]) for count in range(len(parts))]
        verdict = False
        for include, regex in self.rules:
            if any(regex.fullmatch(candidate) for candidate in candidates):
                verdict = not include
        return verdict


# --- Helm chart rendering ------------------------------------------------------------------------------


class TemplateError(Exception):
    """A template failed to render (including `fail` and `required`), or used unsupported syntax."""


def render_chart(
    chart_dir: Path,
    overrides: Mapping[str, Any] | None = None,
    release: str = "authproxy",
    namespace: str = "default",
) -> dict[str, str]:
    """Like `helm template`: rendered text per template path ("authproxy/templates/x.yaml")."""
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text(encoding="utf-8"))
    values = _coalesce(
        yaml.safe_load((chart_dir / "values.yaml").read_text(encoding="utf-8")) or {}, overrides
    )
    name = chart["name"]
    sources = {
        f"{name}/templates/{path.name}": path.read_text(encoding="utf-8")
        for path in sorted((chart_dir / "templates").iterdir())
        if path.is_file()
    }
    engine = _Engine()
    for template_name, source in sources.items():
        engine.add(template_name, source)
    root = {
        "Values": values,
        "Release": {
            "Name": release,
            "Namespace": namespace,
            "Service": "Helm",
            "IsInstall": True,
            "IsUpgrade": False,
            "Revision": 1,
        },
        "Chart": {key[:1].upper() + key[1:]: value for key, value in chart.items()},
        "Template": {"BasePath": f"{name}/templates"},
    }
    rendered = {}
    for template_name in sources:
        if template_name.rsplit("/", 1)[1].startswith("_"):
            continue
        data = {**root, "Template": {**root["Template"], "Name": template_name}}
        rendered[template_name] = engine.execute(template_name, data)
    return rendered


def _coalesce(base: dict[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Helm's merge of user values over the chart's: maps merge, anything else replaces, null deletes."""
    merged = copy.deepcopy(base)
    for key, value in (overrides or {}).items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _coalesce(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# The template language: text, {{ actions }} and {{/* comments */}}, with the trim markers.
_ACTION = re.compile(r"\{\{(-[ \t\r\n])?(.*?)([ \t\r\n]-)?\}\}", re.S)
_TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>"(?:[^"\\]|\\.)*"|`[^`]*`)
    | (?P<number>-?\d+(?:\.\d+)?)
    | (?P<declare>:=)
    | (?P<assign>=)
    | (?P<punct>[|(),])
    | (?P<variable>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
    | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.X,
)


@dataclass
class _Node:
    kind: str  # text, output, if, range, with, template
    text: str = ""
    pipe: Any = None
    body: list[_Node] = field(default_factory=list)
    otherwise: list[_Node] = field(default_factory=list)
    variables: list[str] = field(default_factory=list)
    name: str = ""


class _Engine:
    def __init__(self) -> None:
        self.templates: dict[str, list[_Node]] = {}

    def add(self, name: str, source: str) -> None:
        actions = _split(source)
        nodes, terminator = self._parse(actions, top=True)
        assert terminator is None
        self.templates[name] = nodes

    def execute(self, name: str, data: Any) -> str:
        if name not in self.templates:
            raise TemplateError(f"no template {name!r}")
        scope = _Scope(data)
        return "".join(self._run(self.templates[name], data, scope))

    # parsing ------------------------------------------------------------------------------------------

    def _parse(self, items: Iterator[tuple[str, str]], top: bool = False) -> tuple[list[_Node], str | None]:
        nodes: list[_Node] = []
        for kind, content in items:
            if kind == "text":
                nodes.append(_Node("text", text=content))
                continue
            keyword, _, rest = content.partition(" ")
            rest = rest.strip()
            if keyword in ("end", "else"):
                if top:
                    raise TemplateError(f"unexpected {{{{ {content} }}}}")
                return nodes, content
            if keyword == "define":
                body, end = self._parse(items)
                if end != "end":
                    raise TemplateError(f"define {rest} is not closed by end")
                self.templates[ast.literal_eval(rest)] = body
            elif keyword in ("if", "with"):
                nodes.append(self._conditional(keyword, rest, items))
            elif keyword == "range":
                variables, pipe = _range_clause(rest)
                body, end = self._parse(items)
                node = _Node("range", pipe=pipe, body=body, variables=variables)
                if end == "else":
                    node.otherwise, end = self._parse(items)
                if end != "end":
                    raise TemplateError("range is not closed by end")
                nodes.append(node)
            elif keyword == "template":
                name, _, argument = rest.partition(" ")
                nodes.append(_Node("template", name=ast.literal_eval(name), pipe=_parse_pipeline(argument)))
            elif keyword in ("block", "break", "continue"):
                raise TemplateError(f"{keyword} is outside the supported subset")
            else:
                nodes.append(_Node("output", pipe=_parse_pipeline(content)))
        if not top:
            raise TemplateError("unexpected end of template inside a block")
        return nodes, None

    def _conditional(self, keyword: str, condition: str, items: Iterator[tuple[str, str]]) -> _Node:
        body, end = self._parse(items)
        node = _Node(keyword, pipe=_parse_pipeline(condition), body=body)
        if end is not None and end.startswith("else if "):
            node.otherwise = [self._conditional("if", end[len("else if ") :], items)]
        elif end == "else":
            node.otherwise, end = self._parse(items)
            if end != "end":
                raise TemplateError(f"{keyword} ... else is not closed by end")
        elif end != "end":
            raise TemplateError(f"{keyword} is not closed by end")
        return node

    # execution ----------------------------------------------------------------------------------------

    def _run(self, nodes: list[_Node], dot: Any, scope: _Scope) -> Iterator[str]:
        for node in nodes:
            if node.kind == "text":
                yield node.text
            elif node.kind == "output":
                value = self._pipeline(node.pipe, dot, scope)
                if node.pipe.declare is None:
                    yield _go_string(value)
            elif node.kind in ("if", "with"):
                value = self._pipeline(node.pipe, dot, scope)
                if _truthy(value):
                    yield from self._run(node.body, value if node.kind == "with" else dot, scope.child())
                else:
                    yield from self._run(node.otherwise, dot, scope.child())
            elif node.kind == "range":
                yield from self._range(node, dot, scope)
            elif node.kind == "template":
                yield self.execute(node.name, self._pipeline(node.pipe, dot, scope))

    def _range(self, node: _Node, dot: Any, scope: _Scope) -> Iterator[str]:
        value = self._pipeline(node.pipe, dot, scope)
        if isinstance(value, dict):
            pairs = [(key, value[key]) for key in sorted(value)]
        elif isinstance(value, list):
            pairs = list(enumerate(value))
        elif value is None:
            pairs = []
        else:
            raise TemplateError(f"range can't iterate over {value!r}")
        if not pairs:
            yield from self._run(node.otherwise, dot, scope.child())
        for key, item in pairs:
            inner = scope.child()
            if len(node.variables) == 1:
                inner.declare(node.variables[0], item)
            elif len(node.variables) == 2:
                inner.declare(node.variables[0], key)
                inner.declare(node.variables[1], item)
            yield from self._run(node.body, item, inner)

    def _pipeline(self, pipe: _Pipeline, dot: Any, scope: _Scope) -> Any:
        value: Any = _NOTHING
        for command in pipe.commands:
            value = self._command(command, dot, scope, value)
        if pipe.declare is not None and pipe.new:
            scope.declare(pipe.declare, value)
        elif pipe.declare is not None:
            scope.assign(pipe.declare, value)
        return value

    def _command(self, command: list[Any], dot: Any, scope: _Scope, piped: Any) -> Any:
        head = command[0]
        if isinstance(head, _Ident) and head.name not in ("true", "false", "nil"):
            args = [self._operand(arg, dot, scope) for arg in command[1:]]
            if piped is not _NOTHING:
                args.append(piped)
            return self._call(head.name, args, dot)
        if len(command) > 1 or piped is not _NOTHING:
            raise TemplateError(f"can't give arguments to non-function {head!r}")
        return self._operand(head, dot, scope)

    def _operand(self, operand: Any, dot: Any, scope: _Scope) -> Any:
        if isinstance(operand, _Ident):
            literals = {"true": True, "false": False, "nil": None}
            return literals[operand.name] if operand.name in literals else self._call(operand.name, [], dot)
        if isinstance(operand, _Field):
            base = dot if operand.base is None else scope.lookup(operand.base)
            return _walk(base, operand.path)
        if isinstance(operand, _Sub):
            return _walk(self._pipeline(operand.pipe, dot, scope), operand.path)
        return operand.value

    def _call(self, name: str, args: list[Any], dot: Any) -> Any:
        if name == "include":
            template, data = args
            return self.execute(template, data)
        function = _FUNCTIONS.get(name)
        if function is None:
            raise TemplateError(f"function {name!r} is outside the supported subset")
        return function(*args)


class _Scope:
    def __init__(self, root: Any, parent: _Scope | None = None) -> None:
        self.names: dict[str, Any] = {"$": root} if parent is None else {}
        self.parent = parent

    def child(self) -> _Scope:
        return _Scope(None, self)

    def declare(self, name: str, value: Any) -> None:
        self.names[name] = value

    def assign(self, name: str, value: Any) -> None:
        scope: _Scope | None = self
        while scope is not None and name not in scope.names:
            scope = scope.parent
        if scope is None:
            raise TemplateError(f"undefined variable {name}")
        scope.names[name] = value

    def lookup(self, name: str) -> Any:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.names:
                return scope.names[name]
            scope = scope.parent
        raise TemplateError(f"undefined variable {name}")


# parsed expressions ---------------------------------------------------------------------------------------


_NOTHING = object()


@dataclass
class _Ident:
    name: str


@dataclass
class _Literal:
    value: Any


@dataclass
class _Field:
    base: str | None  # a variable name, or None for dot
    path: list[str]


@dataclass
class _Sub:
    pipe: _Pipeline
    path: list[str]


@dataclass
class _Pipeline:
    commands: list[list[Any]]
    declare: str | None = None
    new: bool = True


def _split(source: str) -> Iterator[tuple[str, str]]:
    """Text and action items, with the whitespace the trim markers remove already removed."""
    items: list[list[str]] = []
    position = 0
    trim_next = False
    for match in _ACTION.finditer(source):
        text = source[position : match.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if match.group(1):
            text = text.rstrip(" \t\r\n")
        items.append(["text", text])
        content = match.group(2).strip()
        if not (content.startswith("/*") and content.endswith("*/")):
            items.append(["action", content])
        trim_next = bool(match.group(3))
        position = match.end()
    tail = source[position:]
    items.append(["text", tail.lstrip(" \t\r\n") if trim_next else tail])
    return iter((kind, content) for kind, content in items if kind == "action" or content)


def _range_clause(clause: str) -> tuple[list[str], _Pipeline]:
    match = re.fullmatch(r"(\$\w*)(?:\s*,\s*(\$\w*))?\s*:=\s*(.*)", clause, re.S)
    if match is None:
        return [], _parse_pipeline(clause)
    variables = [name for name in match.group(1, 2) if name]
    return variables, _parse_pipeline(match.group(3))


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise TemplateError(f"cannot parse {text[position:]!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind == "field" and tokens and tokens[-1] == ("punct", ")") and match.group(0)[0] == ".":
            kind = "chain"  # `(pipeline).Field`: only when the field follows the parenthesis directly
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


def _parse_pipeline(text: str) -> _Pipeline:
    tokens = _tokens(text)
    declare, new = None, True
    if len(tokens) > 2 and tokens[0][0] == "variable" and tokens[1][0] in ("declare", "assign"):
        declare, new = tokens[0][1], tokens[1][0] == "declare"
        tokens = tokens[2:]
    pipe, rest = _pipeline_tokens(tokens)
    if rest:
        raise TemplateError(f"unexpected {rest[0][1]!r} in {text!r}")
    pipe.declare, pipe.new = declare, new
    return pipe


def _pipeline_tokens(tokens: list[tuple[str, str]]) -> tuple[_Pipeline, list[tuple[str, str]]]:
    commands: list[list[Any]] = [[]]
    while tokens and tokens[0] != ("punct", ")"):
        kind, value = tokens[0]
        if (kind, value) == ("punct", "|"):
            commands.append([])
            tokens = tokens[1:]
            continue
        operand, tokens = _operand_tokens(tokens)
        commands[-1].append(operand)
    if any(not command for command in commands):
        raise TemplateError("empty command in pipeline")
    return _Pipeline(commands), tokens


def _operand_tokens(tokens: list[tuple[str, str]]) -> tuple[Any, list[tuple[str, str]]]:
    (kind, value), tokens = tokens[0], tokens[1:]
    if kind == "string":
        return _Literal(value[1:-1] if value.startswith("`") else ast.literal_eval(value)), tokens
    if kind == "number":
        return _Literal(float(value) if "." in value else int(value)), tokens
    if kind == "ident":
        return _Ident(value), tokens
    if kind == "field":
        return _Field(None, [part for part in value.split(".") if part]), tokens
    if kind == "variable":
        name, *path = value.split(".")
        return _Field(name, path), tokens
    if (kind, value) == ("punct", "("):
        pipe, tokens = _pipeline_tokens(tokens)
        if not tokens or tokens[0] != ("punct", ")"):
            raise TemplateError("unclosed parenthesis")
        tokens = tokens[1:]
        path = []
        if tokens and tokens[0][0] == "chain":
            path = [part for part in tokens[0][1].split(".") if part]
            tokens = tokens[1:]
        return _Sub(pipe, path), tokens
    raise TemplateError(f"unexpected {value!r}")


# values and functions ------------------------------------------------------------------------------------


def _walk(value: Any, path: list[str]) -> Any:
    for name in path:
        if value is None:
            raise TemplateError(f"nil pointer evaluating interface {{}}.{name}")
        if not isinstance(value, dict):
            raise TemplateError(f"can't evaluate field {name} in {type(value).__name__}")
        value = value.get(name)  # missing keys are Helm's zero value, printed as ""
    return value


def _truthy(value: Any) -> bool:
    return not (
        value is None or value is False or value == 0 or (hasattr(value, "__len__") and len(value) == 0)
    )


def _go_float(number: float) -> str:
    """fmt's %v for a float64: shortest digits, exponent form from 1e+06 up or below 1e-04."""
    if number.is_integer() and abs(number) < 1e6:
        return str(int(number))
    sign, digits, exponent = Decimal(repr(number)).normalize().as_tuple()
    assert isinstance(exponent, int)
    decimal_exponent = len(digits) + exponent - 1
    if -4 <= decimal_exponent < 6:
        return repr(number).removesuffix(".0")
    mantissa = "".join(map(str, digits))
    mantissa = mantissa[0] + ("." + mantissa[1:] if len(mantissa) > 1 else "")
    return f"{'-' if sign else ''}{mantissa}e{decimal_exponent:+03d}"


def _go_string(value: Any) -> str:
    """How Go prints a value into the output (Helm turns "<no value>" into "")."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, dict | list):
        raise TemplateError("printing a map or list directly is outside the supported subset; use toYaml")
    return str(value)


def _go_quote(text: str) -> str:
    """Go's %q (strconv.Quote)."""
    escapes = {'"': '\\"', "\\": "\\\\", "\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r"}
    escapes |= {"\t": "\\t", "\v": "\\v"}
    out = []
    for char in text:
        if char in escapes:
            out.append(escapes[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        elif not char.isprintable():
            out.append(f"\\u{ord(char):04x}" if ord(char) < 0x10000 else f"\\U{ord(char):08x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _go_json(value: Any) -> str:
    """Go's json.Marshal: compact, map keys sorted, <, > and & escaped, whole floats without ".0"."""

    def normalize(item: Any) -> Any:
        if isinstance(item, float) and item.is_integer() and abs(item) < 1e21:
            return int(item)
        if isinstance(item, dict):
            return {str(key): normalize(val) for key, val in item.items()}
        if isinstance(item, list):
            return [normalize(val) for val in item]
        return item

    text = json.dumps(normalize(value), separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


class _GoYamlDumper(yaml.SafeDumper):
    """Quotes like Go's YAML encoder: double quotes where a string needs quoting at all."""

    def choose_scalar_style(self) -> str:
        style = super().choose_scalar_style()
        return '"' if style == "'" else style


def _to_yaml(value: Any) -> str:
    if not isinstance(value, dict | list):
        raise TemplateError("toYaml of a scalar is outside the supported subset")
    text = yaml.dump(
        value, Dumper=_GoYamlDumper, default_flow_style=False, sort_keys=True, allow_unicode=True, width=2**31
    )
    return text.removesuffix("\n")


def _indent(spaces: int, text: str) -> str:
    pad = " " * spaces
    return pad + text.replace("\n", "\n" + pad)


def _strval(value: Any) -> str:
    return value if isinstance(value, str) else _go_string(value)


def _to_int(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return int(float(value)) if value.strip() else 0
    return int(value)


def _kind(value: Any) -> str:
    kinds: tuple[tuple[type[object], str], ...] = (
        (type(None), "invalid"),
        (bool, "bool"),  # before int: a bool is an int too
        (int, "int"),
        (float, "float64"),
        (str, "string"),
        (dict, "map"),
        (list, "slice"),
    )
    return next(name for cls, name in kinds if isinstance(value, cls))


def _printf(template: str, *args: Any) -> str:
    values = iter(args)

    def one(match: re.Match[str]) -> str:
        verb = match.group(1)
        if verb == "%":
            return "%"
        value = next(values)
        if verb == "q":
            return _go_quote(_strval(value))
        if verb == "d":
            return str(int(value))
        return _strval(value)

    return re.sub(r"%([svdq%])", one, template)


def _print(*args: Any) -> str:
    out = ""
    for index, arg in enumerate(args):
        if index and not isinstance(arg, str) and not isinstance(args[index - 1], str):
            out += " "
        out += _strval(arg)
    return out


def _required(message: str, value: Any) -> Any:
    if value is None or value == "":
        raise TemplateError(message)
    return value


def _fail(message: str) -> Any:
    raise TemplateError(message)


def _set(mapping: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    mapping[key] = value
    return mapping


def _and(*args: Any) -> Any:
    return next((arg for arg in args if not _truthy(arg)), args[-1])


def _or(*args: Any) -> Any:
    return next((arg for arg in args if _truthy(arg)), args[-1])


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "add": lambda *numbers: sum(_to_int(n) for n in numbers),
    "and": _and,
    "deepCopy": copy.deepcopy,
    "default": lambda fallback, *given: given[0] if given and _truthy(given[0]) else fallback,
    "dict": lambda *pairs: {str(pairs[i]): pairs[i + 1] for i in range(0, len(pairs), 2)},
    "eq": lambda first, *others: any(first == other for other in others),
    "fail": _fail,
    "indent": _indent,
    "int": _to_int,
    "join": lambda separator, items: separator.join(_strval(item) for item in items or []),
    "kindIs": lambda kind, value: _kind(value) == kind,
    "lt": lambda a, b: a < b,
    "ne": lambda a, b: a != b,
    "nindent": lambda spaces, text: "\n" + _indent(spaces, text),
    "not": lambda value: not _truthy(value),
    "omit": lambda mapping, *keys: {k: v for k, v in mapping.items() if k not in keys},
    "or": _or,
    "print": _print,
    "printf": _printf,
    "quote": lambda *values: " ".join(_go_quote(_strval(v)) for v in values if v is not None),
    "required": _required,
    "set": _set,
    "sha256sum": lambda text: hashlib.sha256(text.encode("utf-8")).hexdigest(),
    "toJson": _go_json,
    "toString": _strval,
    "toYaml": _to_yaml,
    "trim": lambda text: text.strip(),
    "trimSuffix": lambda suffix, text: text.removesuffix(suffix),
    "trunc": lambda length, text: text[:length] if length >= 0 else text[length:],
}
