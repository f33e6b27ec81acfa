"""Serving: the OpenAI-compatible protocol, the batched engine over one mixed model, endpoint metrics, and the
Ray Serve application that puts them behind HTTP.

    protocol.py    request bodies (pydantic models, validated against the soup's ``SoupInfo``), responses
    options.py     ``ServeOptions``: the application's ``args``, parsed once where the app is built
    engine.py      ``SoupEngine``: one bundle as a mixed model; requests prepared as row plans and settings
    scheduler.py   ``Scheduler``: the replica's continuous-batching decode loop (admit, step, evict)
    deployment.py  the Ray Serve deployments: ``OpenAIIngress`` (FastAPI) and ``SoupModel`` (the model)
    builder.py     ``build_app(options)``: the two deployments bound into a Serve application
    metrics.py     Prometheus metrics of the endpoint

``serve/app.py`` is the import path Serve runs (``serve run serve.app:app``, ``serve/config.yaml``); in
code: ``serve.run(build_app(ServeOptions(soup=...)))`` with ``from soupkitchen.serving.builder import
build_app`` (imported from its module, so this package loads without Ray Serve and FastAPI).
"""

from soupkitchen.serving.engine import Delta, Job, SoupEngine, TextStream
from soupkitchen.serving.options import ServeOptions
from soupkitchen.serving.protocol import (
    APIError,
    ChatBody,
    CompletionBody,
    GenerationRequest,
    SoupInfo,
    parse_json,
    parse_preference,
    parse_request,
)
from soupkitchen.serving.scheduler import Scheduler

__all__ = [
    "APIError",
    "ChatBody",
    "CompletionBody",
    "Delta",
    "GenerationRequest",
    "Job",
    "Scheduler",
    "ServeOptions",
    "SoupEngine",
    "SoupInfo",
    "TextStream",
    "parse_json",
    "parse_preference",
    "parse_request",
]
