"""A short schemathesis run against the endpoint's own OpenAPI, in process (fake backend, no Ray).

Every operation gets a few dozen generated requests, valid and not, with the bearer token configured
(schemathesis also checks that leaving it out is refused): none may get a 5xx, a status or a body the
schema does not document. Left out: schemathesis' "schema-valid data must be accepted" check. History
rows are judged by the data layer's rules (``serve.history``: timestamps that parse, no duplicates, a
row's service matching the request's, ...), which JSON Schema cannot express; their refusal is a
documented 422 naming the field. Bounded to a few seconds per operation (``max_examples``).
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance
from test_serve_http_api import FakeBackend

from serve.http_api import create_api

TOKEN = "fuzz-token"
schema = schemathesis.openapi.from_asgi("/openapi.json", create_api(FakeBackend(), token=TOKEN))


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_endpoint_conforms_to_its_openapi(case: object) -> None:
    case.call_and_validate(  # type: ignore[attr-defined]
        headers={"Authorization": f"Bearer {TOKEN}"}, excluded_checks=[positive_data_acceptance]
    )
