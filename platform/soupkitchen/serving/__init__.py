"""Serving: the OpenAI-compatible protocol, the batched engine over one mixed model, endpoint metrics.

The Ray Serve application that puts them behind HTTP is ``serve/app.py``.
"""

from soupkitchen.serving.engine import BatchRun, Delta, Job, ServeOptions, SoupEngine, TextStream
from soupkitchen.serving.protocol import (
    APIError,
    GenerationRequest,
    SoupInfo,
    parse_preference,
    parse_request,
)

__all__ = [
    "APIError",
    "BatchRun",
    "Delta",
    "GenerationRequest",
    "Job",
    "ServeOptions",
    "SoupEngine",
    "SoupInfo",
    "TextStream",
    "parse_preference",
    "parse_request",
]
