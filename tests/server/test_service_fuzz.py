"""Schema-driven fuzzing of the API (schemathesis, from the app's own OpenAPI): no input gets a 5xx.

Bounded: a few examples per operation, no worker threads (jobs only queue), the models never load.
"""

from __future__ import annotations

import tempfile

import schemathesis
from hypothesis import HealthCheck, settings
from service_helpers import AUTH, TINY, make_settings

from faceprompt.server import create_app

#: Examples per operation: enough to reach every field's bounds and types, small enough for the suite's time.
EXAMPLES = 12

app = create_app(
    make_settings(tempfile.mkdtemp(prefix="faceprompt-fuzz-")), TINY, workers=0
)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_input_gets_a_server_error(case):
    response = case.call(headers=AUTH)
    assert response.status_code < 500, (
        case.method,
        case.path,
        response.status_code,
        response.text[:500],
    )
