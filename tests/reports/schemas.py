"""The SARIF 2.1.0 schema that report tests validate against."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest

from conftest import REPO_ROOT, skip_or_fail

SCHEMA_NAME = "sarif-schema-2.1.0.json"
SCHEMA_VARIABLE = "PIPELINE_SARIF_SCHEMA"
DEFAULT_SCHEMAS = (
    REPO_ROOT.parent / "shared" / "schemas" / SCHEMA_NAME,
    Path("/work/shared/schemas") / SCHEMA_NAME,
)


@pytest.fixture(scope="module")
def sarif_validator() -> jsonschema.protocols.Validator:
    """A validator for $PIPELINE_SARIF_SCHEMA, else for the first default copy found."""
    configured = os.environ.get(SCHEMA_VARIABLE)
    candidates = (Path(configured),) if configured else DEFAULT_SCHEMAS
    schema_path = next((path for path in candidates if path.is_file()), None)
    if schema_path is None:
        searched = ", ".join(str(path) for path in candidates)
        skip_or_fail(f"SARIF schema not found (looked at {searched}); set {SCHEMA_VARIABLE}")
        raise AssertionError("unreachable")
    schema = json.loads(schema_path.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
