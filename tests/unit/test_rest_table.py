"""The REST route table: what each request path finds, as pure code (no Ray, no server)."""

from __future__ import annotations

import pytest

from serve_app.errors import tfserving_error_body
from serve_app.fastapi_app import build_fastapi_app
from serve_app.protocols import openai
from serve_app.rest import Route, RouteTable, compile_path
from serve_app.routes import TABLE


def handler_of(method: str, path: str):
    found = TABLE.match(method, path)
    assert found.route is not None, (method, path, found)
    return found.route, found.params


@pytest.mark.parametrize(
    ("method", "path", "route_path", "params"),
    [
        ("POST", "/v1/models/m:predict", "/v1/models/{path:path}", {"path": "m:predict"}),
        ("POST", "/v1/models/m/labels/a:classify", "/v1/models/{path:path}", {}),
        ("GET", "/v1/models/m/versions/2/metadata", "/v1/models/{path:path}", {}),
        ("GET", "/v1/models", "/v1/models", {}),
        ("POST", "/v2/models/m/infer", "/v2/models/{name}/infer", {"name": "m"}),
        (
            "POST",
            "/v2/models/m/versions/12/infer",
            "/v2/models/{name}/versions/{version}/infer",
            {"name": "m", "version": "12"},
        ),
        ("POST", "/v2/models/m/labels/canary/infer", "/v2/models/{name}/labels/{label}/infer", {}),
        ("GET", "/v2/models/m/labels/canary/ready", "/v2/models/{name}/labels/{label}/ready", {}),
        ("GET", "/v2/models/m/stats", "/v2/models/{name}/stats", {}),
        ("HEAD", "/v2/health/live", "/v2/health/live", {}),
        ("POST", "/v1/embeddings/", "/v1/embeddings/", {}),
        ("POST", "/v1/chat/completions", "/v1/chat/completions", {}),
        ("GET", "/", "/", {}),
        ("GET", "/fleet", "/fleet", {}),
    ],
)
def test_each_path_finds_its_route(method, path, route_path, params):
    route, found = handler_of(method, path)
    assert route.path == route_path
    assert params.items() <= found.items()


def test_a_route_group_answers_errors_in_its_own_body():
    assert TABLE.match("POST", "/v1/completions").errors is openai.error_body
    assert TABLE.match("POST", "/v2/models/m/infer").errors is tfserving_error_body
    # Another method on a route's path: 405 in that route's body.
    wrong = TABLE.match("GET", "/v1/chat/completions")
    assert wrong.route is None and wrong.allowed and wrong.errors is openai.error_body
    # A path that only ends like an OpenAI route is no OpenAI route.
    assert TABLE.match("POST", "/x/v1/completions").errors is None


def test_no_route_redirects_to_the_other_slash_or_is_not_found():
    assert TABLE.match("GET", "/v2/health/ready/").redirect == "/v2/health/ready"
    assert TABLE.match("GET", "/v2/models/m/stats/").redirect == "/v2/models/m/stats"
    assert TABLE.match("GET", "/v2/models/m/").redirect == "/v2/models/m"
    nothing = TABLE.match("GET", "/nowhere")
    assert (nothing.route, nothing.allowed, nothing.redirect) == (None, (), None)


def test_path_parameters_are_one_segment_and_a_path_parameter_the_rest():
    segment = compile_path("/a/{name}/b")
    assert segment.fullmatch("/a/x/b") and not segment.fullmatch("/a/x/y/b")
    rest = compile_path("/a/{rest:path}")
    assert rest.fullmatch("/a/x/y\nz")["rest"] == "x/y\nz"  # a decoded %0A stays in the path
    assert not compile_path("/v2/health/live").fullmatch("/v2/health/live\n")


def test_the_first_route_of_a_method_wins():
    async def first(_):
        return None

    async def second(_):
        return None

    table = RouteTable(
        [Route("GET", "/a/{x}", first, tfserving_error_body), Route("GET", "/a/b", second, str)]
    )
    assert table.match("GET", "/a/b").route.handler is first


def test_the_openapi_document_lists_the_table():
    paths = build_fastapi_app().openapi()["paths"]
    expected = {
        (r.path.replace(":path", ""), r.method.lower()) for r in TABLE.routes if r.in_schema
    }
    listed = {(path, method) for path, item in paths.items() for method in item}
    assert listed == expected
    parameters = paths["/v2/models/{name}/versions/{version}/infer"]["post"]["parameters"]
    assert [p["name"] for p in parameters] == ["name", "version"]
