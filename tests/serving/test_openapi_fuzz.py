"""The API against its own OpenAPI document: schemathesis generates requests from the spec
(valid and invalid multipart bodies, query strings) and checks every answer: no 5xx, and each
status code, content type and body as documented."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graft.serving.app import create_app

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the test extras")
positive_data_acceptance = schemathesis.checks.positive_data_acceptance


@pytest.fixture(scope="module")
def api_schema(run):
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(run[1], device="cpu", max_files=4))


def test_every_answer_is_as_documented_and_never_a_server_error(api_schema):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} >= {("POST", "/predict"), ("GET", "/info")}
    seen: dict[str, set[int]] = {}

    @given(case=st.one_of(*(op.as_strategy() for op in operations)))
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    def check(case) -> None:
        response = case.call()
        seen.setdefault(f"{case.method} {case.path}", set()).add(response.status_code)
        assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
        # A schema cannot say "bytes that decode as an image": the random bytes it generates for a
        # schema-valid file are rightly refused (415/422), so that one check is left out.
        case.validate_response(response, excluded_checks=[positive_data_acceptance])

    check()
    assert seen.get("POST /predict"), seen  # the fuzzer did reach the upload route
