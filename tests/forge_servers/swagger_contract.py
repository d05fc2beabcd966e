"""Check HTTP requests (and answers) against Gitea's own Swagger 2.0 document.

:class:`SwaggerContract` loads ``tests/contracts/gitea-swagger.v1.json`` (Gitea
1.25.4's ``swagger.v1.json``) and, for one request, finds the operation (method +
path template under ``basePath``), then reports every way the request departs
from the document:

* no operation for the method and path (an endpoint Gitea does not have);
* a path parameter of the wrong type (``/pulls/abc`` where ``index`` is int64);
* a query parameter the operation does not declare (``?head=`` on the PR list:
  Gitea ignores it and answers every PR, so a client relying on it is wrong),
  or a declared one with a value of the wrong type or outside its ``enum``;
* a JSON body on an operation without a body parameter, a body that is not
  JSON, or a body that does not validate against the body parameter's schema
  (``$ref`` s resolved into ``definitions``; Swagger 2.0 schemas are close to
  JSON Schema draft 4, validated with ``jsonschema``'s Draft4Validator and no
  format checker, so ``format`` is not enforced). With ``strict_bodies`` (the
  default) an object property the schema does not declare is a violation too:
  Gitea's JSON decoding drops unknown keys silently (``"do"`` for ``"Do"``).

:meth:`SwaggerContract.check_response` checks a 2xx JSON answer against the
documented response schema, leniently: any value may be ``null`` (Go pointers
and nil slices) and a string enum also accepts ``""`` (Go's zero value, e.g. the
combined status of a commit without statuses). It is used to keep the test
server's answers honest.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from jsonschema import Draft4Validator

DEFAULT_DOCUMENT = Path(__file__).resolve().parent.parent / "contracts" / "gitea-swagger.v1.json"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch")
# Gitea routes GET .../pulls/{base}/* : the head of a PR may contain '/' (gitea-endpoints.md).
GREEDY_PARAMS = {("repoGetPullRequestByBaseHead", "head")}
INTEGER_RE = re.compile(r"^-?[0-9]+$")
BOOLEAN_VALUES = {"true", "false", "1", "0", "t", "f", "TRUE", "FALSE", "True", "False"}


@dataclass
class Operation:
    method: str
    template: str
    operation_id: str
    spec: dict[str, Any]
    regex: re.Pattern[str]
    param_names: list[str]
    literal_segments: int

    def parameters(self, where: str) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in self.spec.get("parameters", []) if p.get("in") == where}

    @property
    def body_parameter(self) -> dict[str, Any] | None:
        for param in self.spec.get("parameters", []):
            if param.get("in") == "body":
                return param
        return None


@dataclass
class Match:
    """The operation a request was matched to, with its decoded path parameters and the violations found."""

    operation: Operation | None
    path_params: dict[str, str] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    @property
    def operation_id(self) -> str | None:
        return self.operation.operation_id if self.operation else None


def _strictify(schema: Any) -> Any:
    """A copy where every object schema with declared properties forbids undeclared ones."""
    if isinstance(schema, dict):
        out = {key: _strictify(value) for key, value in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strictify(item) for item in schema]
    return schema


def _lenient(schema: Any) -> Any:
    """A copy where every typed value may also be null and a string enum may also be ''."""
    if isinstance(schema, dict):
        out = {key: (_lenient(value) if key != "enum" else value) for key, value in schema.items()}
        if key_type := out.get("type"):
            types = key_type if isinstance(key_type, list) else [key_type]
            if "null" not in types:
                out["type"] = [*types, "null"]
        if "enum" in out and all(isinstance(v, str) for v in out["enum"]):
            out["enum"] = [*out["enum"], "", None]
        if "$ref" in out:  # draft 4 ignores siblings of $ref: allow null around it
            return {"anyOf": [{"type": "null"}, {"$ref": out["$ref"]}]}
        return out
    if isinstance(schema, list):
        return [_lenient(item) for item in schema]
    return schema


class SwaggerContract:
    """One Swagger 2.0 document, ready to match and check requests."""

    def __init__(self, document: Path | dict[str, Any] = DEFAULT_DOCUMENT, *, strict_bodies: bool = True) -> None:
        if isinstance(document, Path):
            document = json.loads(document.read_text(encoding="utf-8"))
        assert isinstance(document, dict)
        if document.get("swagger") != "2.0":
            raise ValueError("not a Swagger 2.0 document")
        self.document = document
        self.base_path = str(document.get("basePath") or "").rstrip("/")
        self.strict_bodies = strict_bodies
        self.operations = self._operations()
        self._validators: dict[tuple[str, ...], Draft4Validator] = {}
        # Query parameters every operation accepts: the document's query-string security schemes.
        self.global_query = {
            scheme["name"]
            for scheme in (document.get("securityDefinitions") or {}).values()
            if scheme.get("in") == "query"
        }

    def _operations(self) -> list[Operation]:
        found: list[Operation] = []
        for template, item in self.document["paths"].items():
            shared = item.get("parameters", [])
            for method, spec in item.items():
                if method not in HTTP_METHODS:
                    continue
                spec = dict(spec)
                spec["parameters"] = [*shared, *spec.get("parameters", [])]
                pattern, names, literals = "", [], 0
                for segment in template.strip("/").split("/"):
                    param = re.fullmatch(r"\{([^}]+)\}", segment)
                    if param:
                        names.append(param.group(1))
                        greedy = (spec.get("operationId"), param.group(1)) in GREEDY_PARAMS
                        pattern += "/(.+)" if greedy else "/([^/]+)"
                    else:
                        literals += 1
                        pattern += "/" + re.escape(segment)
                found.append(Operation(
                    method=method.upper(), template=template, operation_id=str(spec.get("operationId")),
                    spec=spec, regex=re.compile(f"^{pattern}$"), param_names=names, literal_segments=literals,
                ))
        # The most literal template wins (…/pulls/{index}/merge before …/pulls/{base}/{head}).
        found.sort(key=lambda op: (-op.literal_segments, len(op.param_names)))
        return found

    @cached_property
    def _definitions(self) -> dict[str, Any]:
        return self.document.get("definitions") or {}

    @cached_property
    def _strict_definitions(self) -> dict[str, Any]:
        return _strictify(copy.deepcopy(self._definitions))

    @cached_property
    def _lenient_definitions(self) -> dict[str, Any]:
        return _lenient(copy.deepcopy(self._definitions))

    # -- matching ----------------------------------------------------------------

    def match(self, method: str, raw_path: str) -> Match:
        """The operation of ``method raw_path`` (raw = still percent-encoded, query excluded)."""
        if self.base_path and not (raw_path == self.base_path or raw_path.startswith(self.base_path + "/")):
            return Match(None, violations=[f"{method} {raw_path}: not under basePath {self.base_path}"])
        relative = raw_path[len(self.base_path):] or "/"
        path_matched = False
        type_problems: list[str] = []
        for operation in self.operations:
            found = operation.regex.match(relative)
            if not found:
                continue
            path_matched = True
            if operation.method != method.upper():
                continue
            params = {name: unquote(value) for name, value in zip(operation.param_names, found.groups())}
            problems = [
                problem
                for name, value in params.items()
                if (problem := self._value_problem(operation.parameters("path").get(name, {}), value, f"path {name}"))
            ]
            if problems:  # a typed parameter that does not fit: maybe another template does
                type_problems += [f"{operation.operation_id}: {p}" for p in problems]
                continue
            return Match(operation, params)
        if type_problems:
            return Match(None, violations=[f"{method} {relative}: {'; '.join(type_problems)}"])
        if path_matched:
            return Match(None, violations=[f"{method} {relative}: the path exists but not with method {method}"])
        return Match(None, violations=[f"{method} {relative}: no such operation in the document"])

    @staticmethod
    def _value_problem(param: dict[str, Any], value: str, what: str) -> str | None:
        kind = param.get("type")
        if kind == "integer" and not INTEGER_RE.match(value):
            return f"{what}={value!r} is not an integer"
        if kind == "integer" and "minimum" in param and int(value) < param["minimum"]:
            return f"{what}={value!r} is below the minimum {param['minimum']}"
        if kind == "boolean" and value not in BOOLEAN_VALUES:
            return f"{what}={value!r} is not a boolean"
        if "enum" in param and value not in [str(v) for v in param["enum"]]:
            return f"{what}={value!r} is not one of {param['enum']}"
        return None

    # -- requests ------------------------------------------------------------------

    def check_request(
        self,
        method: str,
        raw_path: str,
        query: dict[str, list[str]],
        body: bytes,
        content_type: str | None = None,
    ) -> Match:
        """Match the request and list every departure from the document in ``Match.violations``."""
        matched = self.match(method, raw_path)
        operation = matched.operation
        if operation is None:
            return matched
        where = f"{method} {raw_path} ({operation.operation_id})"
        declared = operation.parameters("query")
        for name, values in query.items():
            if name in self.global_query:
                continue
            param = declared.get(name)
            if param is None:
                matched.violations.append(f"{where}: query parameter {name!r} is not declared")
                continue
            if param.get("type") == "array":
                if len(values) > 1 and param.get("collectionFormat") != "multi":
                    matched.violations.append(f"{where}: query parameter {name!r} repeated")
                items = param.get("items", {})
                for value in values:
                    parts = value.split(",") if param.get("collectionFormat", "csv") == "csv" else [value]
                    for part in parts:
                        if problem := self._value_problem(items, part, f"query {name}"):
                            matched.violations.append(f"{where}: {problem}")
                continue
            if len(values) > 1:
                matched.violations.append(f"{where}: query parameter {name!r} given {len(values)} times")
            for value in values:
                if problem := self._value_problem(param, value, f"query {name}"):
                    matched.violations.append(f"{where}: {problem}")
        for name, param in declared.items():
            if param.get("required") and name not in query:
                matched.violations.append(f"{where}: required query parameter {name!r} is missing")
        matched.violations += self._body_problems(operation, where, body, content_type)
        return matched

    def _body_problems(self, operation: Operation, where: str, body: bytes, content_type: str | None) -> list[str]:
        param = operation.body_parameter
        if not body:
            if param is not None and param.get("required"):
                return [f"{where}: the body is required"]
            return []
        if param is None:
            return [f"{where}: a body was sent, but the operation takes none"]
        problems: list[str] = []
        consumes = operation.spec.get("consumes") or self.document.get("consumes") or []
        media = (content_type or "").split(";")[0].strip().lower()
        if consumes and media not in consumes:
            problems.append(f"{where}: content type {media or 'none'!r} is not one of {consumes}")
        try:
            data = json.loads(body)
        except ValueError:
            return [*problems, f"{where}: the body is not JSON"]
        validator = self._body_validator(operation)
        for error in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path)):
            at = "/".join(str(p) for p in error.absolute_path) or "(body)"
            problems.append(f"{where}: body {at}: {error.message}")
        return problems

    def _body_validator(self, operation: Operation) -> Draft4Validator:
        key = ("body", operation.method, operation.template)
        if key not in self._validators:
            param = operation.body_parameter or {}
            schema = param.get("schema") or {}
            if self.strict_bodies:
                schema, definitions = _strictify(schema), self._strict_definitions
            else:
                definitions = self._definitions
            self._validators[key] = Draft4Validator({**schema, "definitions": definitions})
        return self._validators[key]

    # -- answers -----------------------------------------------------------------

    def check_response(self, operation: Operation, status: int, data: Any) -> list[str]:
        """Departures of a JSON answer from the documented response (lenient; see the module doc)."""
        responses = operation.spec.get("responses") or {}
        where = f"{operation.method} {operation.template} ({operation.operation_id}) answered {status}"
        response = responses.get(str(status))
        if response is None:
            return [f"{where}: status {status} is not documented"] if 200 <= status < 300 else []
        if "$ref" in response:
            response = self.document["responses"][response["$ref"].rsplit("/", 1)[-1]]
        schema = response.get("schema")
        if schema is None or not (200 <= status < 300):
            return []
        key = ("response", operation.method, operation.template, str(status))
        if key not in self._validators:
            self._validators[key] = Draft4Validator({**_lenient(schema), "definitions": self._lenient_definitions})
        validator = self._validators[key]
        return [
            f"{where}: {'/'.join(str(p) for p in error.absolute_path) or '(answer)'}: {error.message}"
            for error in validator.iter_errors(data)
        ]
