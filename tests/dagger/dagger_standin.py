"""A stand-in for a Dagger engine session. It records the GraphQL requests
that dagger-io sends and responds with placeholder data.

dagger-io builds each request from the schema that the session returns, so
the recorded documents are the ones an engine would receive. Answers are
derived from the schema. An ``ID`` is a digest of the request that produced
it, so the same chain always gets the same ID. Other leaves get an empty
value of their type unless the test's responder returns one.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagger
import graphql
from gql.transport.exceptions import TransportQueryError

# The placeholder that replaces a setSecret plaintext in rendered requests.
SECRET_PLACEHOLDER = "<secret>"
ID_PATTERN = re.compile(r"\b[A-Z][A-Za-z]*@[0-9a-f]{12}\b")


@dataclass(frozen=True)
class Call:
    """One field selection in a request: ``type.field(args)``.

    An argument that was an ID contains the chain of calls that produced it.
    """

    type_name: str
    field: str
    args: dict[str, Any]


@dataclass
class Request:
    """One recorded request: its document, its calls and the ID it returned."""

    document: graphql.DocumentNode
    calls: list[Call]
    returned_id: str | None = None

    @property
    def leaf(self) -> Call:
        return self.calls[-1]


# A responder gets the calls of a request and returns a leaf value, raises
# ExecFailure to report a failed exec, or returns None for the default value.
Responder = Callable[[list[Call]], Any]


class ExecFailure(Exception):
    """Raised by a responder to respond like an engine whose exec failed."""

    def __init__(
        self, command: list[str], exit_code: int, stdout: str = "", stderr: str = ""
    ):
        super().__init__(
            f"process {command!r} did not complete successfully: exit code: {exit_code}"
        )
        self.command = command
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr


class StandInSession:
    """The ``session`` of a connection, as dagger-io's query builder uses it."""

    def __init__(
        self,
        schema: graphql.GraphQLSchema,
        responder: Responder | None = None,
        replacements: dict[str, str] | None = None,
    ) -> None:
        self.schema = schema
        self.responder = responder
        self.replacements = replacements or {}
        self.requests: list[Request] = []
        self.objects: dict[str, list[Call]] = {}

    async def get_schema(self) -> graphql.GraphQLSchema:
        return self.schema

    async def execute(self, request: Any) -> Any:
        document = request.document
        calls = self._calls(document)
        recorded = Request(document, calls)
        self.requests.append(recorded)
        if self.responder is not None:
            try:
                value = self.responder(calls)
            except ExecFailure as failure:
                raise _exec_error(failure) from None
        else:
            value = None
        if value is None:
            value = self._default(document, calls)
        if calls[-1].field in ("id", "sync") and isinstance(value, str):
            recorded.returned_id = value
            self.objects[value] = calls[:-1]
        return _nest(document, value)

    # -- rendering ------------------------------------------------------------

    def render(self, text: str) -> str:
        """Replace host-specific paths so that output is the same everywhere."""
        for old, new in self.replacements.items():
            text = text.replace(old, new)
        return text

    def printed(self, request: Request) -> str:
        """Print a request as sent, with secrets masked and paths replaced."""
        document = _mask_secrets(request.document)
        return self.render(graphql.print_ast(document))

    def transcript(self) -> str:
        """Print every request in order, as golden files store them."""
        parts = []
        for number, request in enumerate(self.requests, start=1):
            parts.append(f"# request {number}\n{self.printed(request)}\n")
        return "\n".join(parts)

    def validation_errors(self) -> list[str]:
        """Validate every recorded request against the schema."""
        errors = []
        for number, request in enumerate(self.requests, start=1):
            for error in graphql.validate(self.schema, request.document):
                errors.append(f"request {number}: {error.message}")
        return errors

    # -- responses ------------------------------------------------------------

    def _calls(self, document: graphql.DocumentNode) -> list[Call]:
        operation = document.definitions[0]
        assert isinstance(operation, graphql.OperationDefinitionNode)
        calls: list[Call] = []
        parent: graphql.GraphQLObjectType | graphql.GraphQLInterfaceType = (
            self.schema.query_type  # type: ignore[assignment]
        )
        selections = operation.selection_set
        while selections is not None:
            node = selections.selections[0]
            if isinstance(node, graphql.InlineFragmentNode):
                condition = node.type_condition.name.value  # type: ignore[union-attr]
                parent = self.schema.get_type(condition)  # type: ignore[assignment]
                selections = node.selection_set
                continue
            assert isinstance(node, graphql.FieldNode)
            raw = {
                argument.name.value: graphql.value_from_ast_untyped(argument.value)
                for argument in node.arguments
            }
            if node.name.value == "node" and raw.get("id") in self.objects:
                calls.extend(self.objects[raw["id"]])
            else:
                args = {name: self._expand(value) for name, value in raw.items()}
                calls.append(Call(parent.name, node.name.value, args))
            field_type = graphql.get_named_type(parent.fields[node.name.value].type)
            if isinstance(
                field_type, (graphql.GraphQLObjectType, graphql.GraphQLInterfaceType)
            ):
                parent = field_type
            selections = node.selection_set
        return calls

    def _expand(self, value: Any) -> Any:
        """Replace IDs that this session returned with the calls behind them."""
        if isinstance(value, str) and value in self.objects:
            return self.objects[value]
        if isinstance(value, list):
            return [self._expand(item) for item in value]
        if isinstance(value, dict):
            return {key: self._expand(item) for key, item in value.items()}
        return value

    def _default(self, document: graphql.DocumentNode, calls: list[Call]) -> Any:
        leaf_type = self._leaf_type(calls)
        if isinstance(leaf_type, graphql.GraphQLList):
            return []
        named = graphql.get_named_type(leaf_type)
        if named.name == "ID":
            object_type = self._id_type(calls)
            printed = self.render(graphql.print_ast(_mask_secrets(document)))
            digest = hashlib.sha256(printed.encode()).hexdigest()[:12]
            return f"{object_type}@{digest}"
        if named.name == "Int":
            return 0
        if named.name == "Boolean":
            return False
        if isinstance(named, graphql.GraphQLEnumType):
            return next(iter(named.values))
        return ""

    def _leaf_type(self, calls: list[Call]) -> graphql.GraphQLOutputType:
        leaf = calls[-1]
        parent = self.schema.get_type(leaf.type_name)
        field_type = parent.fields[leaf.field].type  # type: ignore[union-attr]
        return graphql.get_nullable_type(field_type)  # type: ignore[return-value]

    def _id_type(self, calls: list[Call]) -> str:
        leaf = calls[-1]
        if leaf.field == "id":
            return leaf.type_name
        parent = self.schema.get_type(leaf.type_name)
        field = parent.fields[leaf.field]  # type: ignore[union-attr]
        directives = field.ast_node.directives
        for directive in directives:
            if directive.name.value == "expectedType":
                argument = directive.arguments[0].value
                return str(argument.value)  # type: ignore[attr-defined]
        return leaf.type_name


class ScriptedEngine:
    """A responder with scripted exit codes, output and files.

    A command matches a key that occurs in its arguments joined with spaces.
    Files are written where the backend exports them.
    """

    def __init__(self) -> None:
        self.exit_codes: dict[str, int] = {}
        self.stdout: dict[str, str] = {}
        self.stderr: dict[str, str] = {}
        self.files: dict[str, str] = {}
        self.failing_setup: str | None = None
        # Pushes: the digest each push reports (by address, else the default),
        # errors raised one per attempt for addresses that end with the key,
        # and the addresses pushed.
        self.push_digest = "sha256:" + "d1" * 32
        self.push_digests: dict[str, str] = {}
        self.push_errors: dict[str, list[str]] = {}
        self.pushed: list[str] = []

    def __call__(self, calls: list[Call]) -> Any:
        leaf = calls[-1]
        command = _last_command(calls)
        if leaf.field == "sync" and self.failing_setup is not None:
            for call in calls:
                args = call.args.get("args")
                if call.field == "withExec" and _matches(args, self.failing_setup):
                    raise ExecFailure(args, 1, "", "setup failed on purpose")
        if leaf.field == "exitCode":
            return self._lookup(self.exit_codes, command, 0)
        if leaf.field == "stdout":
            return self._lookup(self.stdout, command, "")
        if leaf.field == "stderr":
            return self._lookup(self.stderr, command, "")
        if leaf.field == "uri" and len(calls) >= 2 and calls[-2].field == "secret":
            return calls[-2].args["uri"]
        if leaf.field == "exists":
            path = leaf.args["path"]
            expected = leaf.args.get("expectedType")
            return path in self.files and expected in (None, "REGULAR_TYPE")
        if leaf.field == "export" and len(calls) >= 2 and calls[-2].field == "file":
            target = Path(leaf.args["path"])
            target.write_text(self.files.get(calls[-2].args["path"], ""))
            return str(target)
        if leaf.field == "digest":
            return "sha256:" + "0" * 64
        if leaf.field == "publish":
            return self._publish(leaf.args["address"])
        return None

    def _publish(self, address: str) -> str:
        for key, errors in self.push_errors.items():
            if address.endswith(key) and errors:
                message = errors.pop(0)
                raise TransportQueryError(message, errors=[{"message": message}])
        self.pushed.append(address)
        return f"{address}@{self.push_digests.get(address, self.push_digest)}"

    @staticmethod
    def _lookup(table: dict[str, Any], command: list[str] | None, default: Any) -> Any:
        for key, value in table.items():
            if _matches(command, key):
                return value
        return default


class CopyingEngine(ScriptedEngine):
    """Also exports host directories by copying them, as an engine would."""

    def __call__(self, calls: list[Call]) -> Any:
        leaf = calls[-1]
        if leaf.field == "name" and calls[-2].field == "directory":
            return Path(calls[-2].args["path"]).name
        if leaf.field == "export" and calls[-2].field == "directory":
            shutil.copytree(calls[-2].args["path"], leaf.args["path"])
            return leaf.args["path"]
        return super().__call__(calls)


def _last_command(calls: list[Call]) -> list[str] | None:
    for call in reversed(calls):
        if call.field == "withExec":
            return call.args["args"]  # type: ignore[no-any-return]
    return None


def _matches(command: list[str] | None, key: str) -> bool:
    if not command:
        return False
    return key in " ".join(command)


class StandInConnection:
    """A connection for ``dagger.Client.from_connection``."""

    def __init__(self, session: StandInSession) -> None:
        self.session = session


def client_for(session: StandInSession) -> dagger.Client:
    connection = StandInConnection(session)
    return dagger.Client.from_connection(connection)  # type: ignore[arg-type]


def find_calls(calls: list[Call], field: str) -> list[Call]:
    """Return every call to ``field`` in a chain, including nested chains."""
    found = []
    for call in calls:
        if call.field == field:
            found.append(call)
        for value in call.args.values():
            found.extend(_nested_calls(value, field))
    return found


def _nested_calls(value: Any, field: str) -> list[Call]:
    if (
        isinstance(value, list)
        and value
        and all(isinstance(item, Call) for item in value)
    ):
        return find_calls(value, field)
    if isinstance(value, list):
        return [call for item in value for call in _nested_calls(item, field)]
    return []


def _nest(document: graphql.DocumentNode, value: Any) -> dict[str, Any]:
    """Wrap a leaf value in the response shape of a single-chain document."""
    names = []
    selections = document.definitions[0].selection_set  # type: ignore[attr-defined]
    while selections is not None:
        node = selections.selections[0]
        if isinstance(node, graphql.FieldNode):
            names.append(node.alias.value if node.alias else node.name.value)
        selections = node.selection_set
    for name in reversed(names):
        value = {name: value}
    return value  # type: ignore[no-any-return]


def _mask_secrets(document: graphql.DocumentNode) -> graphql.DocumentNode:
    class Masker(graphql.Visitor):
        def enter_field(self, node: graphql.FieldNode, *_: Any) -> Any:
            if node.name.value != "setSecret":
                return None
            arguments = tuple(
                graphql.ArgumentNode(
                    name=argument.name,
                    value=graphql.StringValueNode(value=SECRET_PLACEHOLDER),
                )
                if argument.name.value == "plaintext"
                else argument
                for argument in node.arguments
            )
            return graphql.FieldNode(
                alias=node.alias,
                name=node.name,
                arguments=arguments,
                directives=node.directives,
                selection_set=node.selection_set,
            )

    return graphql.visit(document, Masker())  # type: ignore[no-any-return]


def _exec_error(failure: ExecFailure) -> TransportQueryError:
    """Build the error that dagger-io turns into ``dagger.ExecError``."""
    error = {
        "message": str(failure),
        "extensions": {
            "_type": "EXEC_ERROR",
            "cmd": failure.command,
            "exitCode": failure.exit_code,
            "stdout": failure.stdout,
            "stderr": failure.stderr,
        },
    }
    return TransportQueryError(str(failure), errors=[error])
