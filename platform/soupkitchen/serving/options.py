"""The endpoint's settings: ``ServeOptions``, parsed once per deployment where the application is built.

    options = ServeOptions.from_args({"soup": "models:/soup-demo@production", "num_gpus": "1"})   # the args
    options = ServeOptions(soup="path/to/bundle", model_name="demo")                             # in code

Either way the object is checked once, when it is built (types, the fields' ranges, cross-field rules;
errors name ``args.<key>``), and is frozen: the application builder (``serving.builder.build_app``) hands
that one object to both deployments, whose replicas receive it unpickled, not parsed again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from soupkitchen.config import Schema, config_error
from soupkitchen.errors import ConfigError


class ServeOptions(Schema):
    """The application's settings (``serve/config.yaml`` ``args``; errors name ``args.<key>``).

    ``soup``: bundle URI (``models:/name@alias``, ``runs:/``, ``s3://``) or local path; ``model_name``: the
    served model id (default: derived from ``soup``). Limits: ``max_tokens_limit`` per request,
    ``context_length`` (0: the model's), ``max_body_bytes``, ``request_timeout_s`` (504 after it),
    ``body_timeout_s`` (408 when the body has not arrived: a stalled client holds no capacity), ``max_gamma``
    / ``max_alpha``. ``api_key_env``: if that environment variable is set, requests need ``Authorization:
    Bearer <its value>``; ``api_key_file``: a file of keys, one per line (``#`` comments), any of which is
    accepted (both may be set; ``read_api_keys``). Batching (``serving.scheduler``): ``continuous``
    (requests join and leave the running batch between decode steps) or ``static``, within
    ``max_batch_rows`` forward rows, ``max_batch_tokens`` reserved KV positions and ``max_prefill_tokens``
    per step; an idle replica waits ``batch_wait_timeout_s`` for a burst to gather. Back-pressure: beyond
    ``max_ongoing_requests`` per replica, up to ``max_queued_requests`` wait in Ray Serve's queue; more are
    answered 503. Replicas: ``num_cpus`` / ``num_gpus`` each, autoscaled between ``min_replicas`` and
    ``max_replicas`` on ``target_ongoing_requests`` per replica (Ray Serve's ``autoscaling_config``: averaged
    over ``look_back_period_s``, reported every ``metrics_interval_s``).
    """

    model_config = ConfigDict(frozen=True)

    soup: str = ""
    model_name: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    default_max_tokens: int = Field(64, ge=1)
    max_tokens_limit: int = Field(512, ge=1)
    min_tokens: int = Field(1, ge=0)
    context_length: int = Field(0, ge=0)
    max_body_bytes: int = Field(1_000_000, ge=1024)
    request_timeout_s: float = Field(120.0, gt=0.0)
    body_timeout_s: float = Field(10.0, gt=0.0)  # the whole body must arrive within this, or 408
    max_gamma: float = Field(10.0, ge=0.0)
    max_alpha: float = Field(1.0, ge=0.0)
    api_key_env: str = "SOUPKITCHEN_API_KEY"
    api_key_file: str | None = None  # several keys (rotation, one per client), e.g. a mounted k8s secret
    batching: Literal["continuous", "static"] = "continuous"  # static: the old run-to-the-longest batches
    max_batch_rows: int = Field(32, ge=1)  # forward rows per decode step (a MOD request at n = 2 is 2)
    max_batch_tokens: int = Field(65536, ge=1)  # Σ (prompt + max_tokens) × rows admitted: bounds the KV cache
    max_prefill_tokens: int = Field(2048, ge=1)  # prompt tokens prefilled between two steps: bounds a stall
    batch_wait_timeout_s: float = Field(0.01, ge=0.0)  # an idle replica's wait for a burst to arrive
    max_queued_requests: int = Field(256, ge=-1)  # Ray Serve's queue in front of the replicas (-1: none)
    torch_threads: int = Field(0, ge=0)
    num_cpus: float = Field(1.0, ge=0.0)
    num_gpus: float = Field(0.0, ge=0.0)
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    initial_replicas: int | None = Field(None, ge=0)
    target_ongoing_requests: float = Field(8.0, ge=0.0)
    max_ongoing_requests: int = Field(64, ge=1)
    upscale_delay_s: float = Field(5.0, ge=0.0)
    downscale_delay_s: float = Field(30.0, ge=0.0)
    metrics_interval_s: float = Field(10.0, ge=0.0)
    look_back_period_s: float = Field(30.0, ge=0.0)
    ingress_replicas: int = Field(1, ge=1)
    # The ingress only parses and awaits: Serve's default of 5 would let 5 stalled clients block it.
    ingress_max_ongoing_requests: int = Field(1024, ge=1)

    def __init__(self, /, **data: Any):  # from_args or in code: one validation, errors named args.<key>
        try:
            BaseModel.__init__(self, **data)
        except ValidationError as e:
            raise config_error(e, type(self), "args") from None

    @model_validator(mode="after")
    def _rules(self):
        if not self.soup:
            raise ConfigError("soup", "name the soup bundle (URI or path), or set SOUPKITCHEN_SOUP_URI")
        if self.default_max_tokens > self.max_tokens_limit:
            raise ConfigError("default_max_tokens", "must be <= args.max_tokens_limit")
        if self.max_replicas < max(self.min_replicas, 1):
            raise ConfigError("max_replicas", "must be >= args.min_replicas and >= 1")
        if self.api_key_file is not None:
            read_key_file(self.api_key_file, "api_key_file")  # named args.api_key_file by __init__
        return self

    def read_api_keys(self) -> tuple[bytes, ...]:
        """The accepted keys (empty: no auth): ``api_key_env``'s value and ``api_key_file``'s lines, as
        bytes for ``hmac.compare_digest``. Read where the ingress runs; never logged."""
        keys = [os.environ.get(self.api_key_env, "").strip()]
        if self.api_key_file is not None:
            keys += read_key_file(self.api_key_file)
        return tuple(k.encode() for k in keys if k)

    @classmethod
    def from_args(cls, args: dict | None) -> ServeOptions:
        """The options from an application's ``args`` (``serve/config.yaml``, or ``serve run serve.app:app
        key=value``, whose values arrive as strings and are read as YAML scalars: 0.5, 4, true). ``soup``
        defaults to the ``SOUPKITCHEN_SOUP_URI`` environment variable of the process that builds the app."""
        args = {
            k: yaml.safe_load(v) if isinstance(v, str) and k != "soup" else v for k, v in (args or {}).items()
        }
        if not args.get("soup"):
            args["soup"] = os.environ.get("SOUPKITCHEN_SOUP_URI", "")
        return cls(**{str(k): v for k, v in args.items()})

    @property
    def served_name(self) -> str:
        if self.model_name:
            return self.model_name
        name = self.soup.rstrip("/").rsplit("/", 1)[-1]
        return name.split("@", 1)[0] or "soup"


def read_key_file(path: str, field: str = "args.api_key_file") -> list[str]:
    """The keys in ``path``: one per line, blank lines and ``#`` comments skipped; ConfigError naming
    ``field`` (never a key) when it cannot be read, holds none or a key that is not printable ASCII."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(field, f"cannot read {path!r}: {type(e).__name__}") from None
    keys = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if not keys:
        raise ConfigError(field, f"{path!r} holds no key (one per line, '#' comments)")
    if bad := [i + 1 for i, k in enumerate(keys) if not k.isascii() or not k.isprintable() or " " in k]:
        raise ConfigError(field, f"key {bad[0]} of {path!r} is not printable ASCII without spaces")
    return keys
