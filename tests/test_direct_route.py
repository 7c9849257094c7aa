"""DirectRoute (the recommendation route's class): the endpoint is called without dependency solving, yet path
parameters are validated exactly as FastAPI does, and anything it would skip is refused when the route is built."""
from typing import Annotated

import pytest
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from wenlv.serving.direct_route import DirectRoute

HEX = r"^[0-9a-f]{4}$"


async def direct(request: Request, code: Annotated[str, Path(pattern=HEX)], n: Annotated[int, Path(ge=1)]):
    return JSONResponse({"code": code, "n": n, "q": request.query_params.get("q")})


async def ordinary(code: Annotated[str, Path(pattern=HEX)], n: Annotated[int, Path(ge=1)]):
    return {"code": code, "n": n}


def app_with_both() -> FastAPI:
    app = FastAPI()
    app.router.add_api_route("/d/{code}/{n}", direct, methods=["GET"], route_class_override=DirectRoute)
    app.router.add_api_route("/o/{code}/{n}", ordinary, methods=["GET"])
    router = APIRouter(prefix="/inc")
    router.add_api_route("/d/{code}/{n}", direct, methods=["GET"], route_class_override=DirectRoute)
    app.include_router(router)
    return app


@pytest.mark.parametrize("path", ["abcd/3", "ABCD/3", "abc/3", "abcd/0", "abcd/x", "abcd%0A/2", "zz/-1"])
def test_path_parameters_get_the_same_answer_as_on_an_ordinary_route(path):
    client = TestClient(app_with_both())
    ordinary_answer = client.get(f"/o/{path}")
    for prefix in ("/d", "/inc/d"):
        answer = client.get(f"{prefix}/{path}?q=1")
        assert answer.status_code == ordinary_answer.status_code, (prefix, path, answer.text)
        if answer.status_code == 422:
            assert answer.json() == ordinary_answer.json()
        else:
            assert answer.json() == {**ordinary_answer.json(), "q": "1"}  # the int arrived converted


def test_a_wrong_method_is_405_as_on_any_route():
    response = TestClient(app_with_both()).post("/d/abcd/1")
    assert response.status_code == 405 and response.headers["allow"] == "GET"


async def with_query(request: Request, n: Annotated[int, Query()]):
    return JSONResponse({})


async def with_dependency(request: Request, user: Annotated[str, Depends(lambda: "x")]):
    return JSONResponse({})


async def without_request(code: str):
    return JSONResponse({})


@pytest.mark.parametrize("endpoint, what", [(with_query, "query_params"), (with_dependency, "dependencies"),
                                            (without_request, "no Request parameter")])
def test_what_the_handler_would_skip_is_refused_when_the_route_is_built(endpoint, what):
    with pytest.raises(TypeError, match=what):
        FastAPI().router.add_api_route("/x/{code}", endpoint, methods=["GET"], route_class_override=DirectRoute)


def test_router_dependencies_are_refused_when_the_included_route_is_built():
    router = APIRouter()
    router.add_api_route("/d/{code}/{n}", direct, methods=["GET"], route_class_override=DirectRoute)
    app = FastAPI()
    app.include_router(router, dependencies=[Depends(lambda: None)])  # FastAPI builds included routes on first use
    with pytest.raises(TypeError, match="dependencies"):
        TestClient(app).get("/d/abcd/1")
