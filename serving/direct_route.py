"""A FastAPI route whose endpoint is called without dependency solving, for the hot route.

FastAPI's request handler (dependency solving, per-parameter validation, telemetry context,
response-model processing) was the largest part of the recommendation route's own CPU
(cProfile of the app, callgrind instruction counts). A `DirectRoute` endpoint receives the
`Request` and its path parameters only; the path parameters are still validated by FastAPI's
own field validators (the same 422 as on any route), and the endpoint checks the
caller, parses its query and returns a `Response` itself. OpenAPI documents the route as any
other (its signature, `response_model`, `openapi_extra`). Added to the app's own router it runs without
FastAPI's per-request wrapper too (an included router wraps it again). Anything the handler would skip
(dependencies, query/header/cookie/body parameters) is refused when the route is built,
so nothing is silently left unchecked.
"""
from __future__ import annotations

from fastapi import routing
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request


class DirectRoute(APIRoute):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        handler = self.get_route_handler()

        async def app(scope, receive, send):
            # As a route of the app's own router, without FastAPI's request_response wrapper: its exit stacks serve
            # dependencies with yield (none here) and its exception handling repeats the app's ExceptionMiddleware.
            response = await handler(Request(scope, receive, send))
            await response(scope, receive, send)

        self.app = app

    def get_route_handler(self):
        # An included route is built once per inclusion, with the router's dependencies in its context
        # (FastAPI hands that context over in a context variable, as APIRoute.get_route_handler reads it).
        context = getattr(routing, "_effective_route_context_var", None)
        context = context.get() if context is not None else None
        dependant = context.dependant if context is not None and context.original_route is self else self.dependant
        skipped = [kind for kind in ("dependencies", "query_params", "header_params", "cookie_params", "body_params",
                                     "response_param_name", "background_tasks_param_name", "websocket_param_name",
                                     "http_connection_param_name", "security_scopes_param_name")
                   if getattr(dependant, kind)]
        if skipped or dependant.request_param_name is None:
            raise TypeError(f"DirectRoute {self.path}: the endpoint may take only the Request and path parameters "
                            f"(it has {', '.join(skipped) or 'no Request parameter'})")
        path_fields, request_name, endpoint = dependant.path_params, dependant.request_param_name, self.endpoint

        async def handler(request):
            params = request.path_params
            values, errors = {request_name: request}, []
            for field in path_fields:  # what FastAPI's request_params_to_args does for a path parameter
                value, field_errors = field.validate(params[field.alias], values, loc=("path", field.alias))
                errors.extend(field_errors)
                values[field.name] = value
            if errors:
                raise RequestValidationError(errors)
            return await endpoint(**values)

        return handler
