"""The Ray Serve deployments of the OpenAI-compatible endpoint (``builder.build_app`` binds them).

- ``OpenAIIngress`` (FastAPI, CPU): auth, body limit, JSON and body validation (``serving.protocol``), so a
  bad request is answered 4xx here and never reaches a model replica; OpenAI response / SSE shapes;
  Prometheus ``/metrics``; per-request timeout.
- ``SoupModel`` (the model, GPU or CPU, autoscaled): its ``serving.scheduler.Scheduler`` batches requests
  continuously (they join and leave the running batch between decode steps) through the per-row
  coefficient layer, whatever their μ, mode, γ, α and sampling settings (``serving.engine``); it streams
  per-token deltas back. A request cancelled by Serve (client gone, timeout) leaves the batch at the next
  step.

Routes: POST /v1/completions, POST /v1/chat/completions (both with ``stream``), GET /v1/models,
GET /healthz, GET /metrics. Both deployments take the one ``ServeOptions`` the builder parsed; their
replicas receive it as is (unpickled, not parsed again).
"""

# No `from __future__ import annotations`: FastAPI must see `Request` itself, not a string.
import asyncio
import hmac
import json
import logging
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from ray import serve
from ray.exceptions import RayActorError, TaskCancelledError
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException

from soupkitchen.serving.engine import Job, SoupEngine
from soupkitchen.serving.metrics import EndpointMetrics
from soupkitchen.serving.options import ServeOptions
from soupkitchen.serving.protocol import APIError, GenerationRequest, parse_json, parse_request
from soupkitchen.serving.responses import chunk, response, usage
from soupkitchen.serving.scheduler import Scheduler

log = logging.getLogger("ray.serve")


class _EventStream(StreamingResponse):
    """Starlette's streaming response, except that Serve's ``receive`` raising ``TaskCancelledError`` once
    the client has gone is the disconnect it means, not a failed request (Serve logged a traceback for
    every abandoned stream). The events generator's ``finally`` then frees the request's rows."""

    async def listen_for_disconnect(self, receive) -> None:
        try:
            await super().listen_for_disconnect(receive)
        except TaskCancelledError:
            return


api = FastAPI(title="soupkitchen", description="OpenAI-compatible controllable multi-objective generation")


@api.exception_handler(HTTPException)
async def _http_error(_request, exc: HTTPException):
    err = APIError(exc.status_code, str(exc.detail), None, "invalid_request_error")
    return JSONResponse(err.body(), status_code=exc.status_code)


def _replica_id() -> str:
    try:
        ctx = serve.get_replica_context()
        return getattr(getattr(ctx, "replica_id", None), "unique_id", None) or str(ctx.replica_tag)
    except Exception:  # noqa: BLE001 - outside a replica (unit use)
        return "local"


@serve.deployment(name="SoupModel", health_check_period_s=10)
class SoupModel:
    """The soup as one mixed model; concurrent requests decode together (module docstring)."""

    def __init__(self, options: ServeOptions):
        assert isinstance(options, ServeOptions), options  # parsed once, by the application builder
        self.options = options
        self.engine = SoupEngine(options)
        self.scheduler = Scheduler(self.engine, options)  # the one thread that runs the model
        self.replica = _replica_id()

    def info(self):
        return self.engine.info

    def stats(self) -> dict:
        """What the decode loop is doing now (``Scheduler.stats``) and which replica answers."""
        return self.scheduler.stats() | {"replica": self.replica}

    def _prepare(self, req: GenerationRequest) -> Job | dict:
        try:
            return self.engine.prepare(req)
        except APIError as e:
            return {"error": e}

    async def generate(self, req: GenerationRequest) -> dict:
        """The whole response: text, finish reason, token counts, the batch size it decoded in."""
        job = self._prepare(req)
        if isinstance(job, dict):
            return job
        parts, last = [], None
        try:
            async for d in self._decoded(job):
                parts.append(d.text)
                last = d
        except APIError as e:
            return {"error": e}
        return {
            "text": "".join(parts),
            "finish": last.finish,
            "prompt_tokens": last.prompt_tokens,
            "completion_tokens": last.completion_tokens,
            "batch_size": last.batch_size,
            "replica": self.replica,
            "experts": job.experts,
        }

    async def stream(self, req: GenerationRequest):
        """``{"accepted": prompt tokens}`` (or ``{"error": APIError}``), then one dict per decoding step."""
        job = self._prepare(req)
        if isinstance(job, dict):
            yield job
            return
        yield {"accepted": job.prompt_tokens, "replica": self.replica, "experts": job.experts}
        try:
            async for d in self._decoded(job):
                yield {
                    "text": d.text,
                    "finish": d.finish,
                    "prompt_tokens": d.prompt_tokens,
                    "completion_tokens": d.completion_tokens,
                    "batch_size": d.batch_size,
                }
        except APIError as e:
            yield {"error": e}

    async def _decoded(self, job: Job):
        """The job's deltas from the decode loop; leaving early (cancelled by Serve, the client gone)
        cancels its rows."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        ticket = self.scheduler.submit(job, lambda item: loop.call_soon_threadsafe(queue.put_nowait, item))
        try:
            while True:
                item = await queue.get()
                if isinstance(item, APIError):
                    raise item
                yield item
                if item.finish is not None:
                    return
        finally:
            self.scheduler.cancel(ticket)

    def check_health(self):
        if not self.scheduler.thread.is_alive():
            raise RuntimeError("the decode loop has stopped")

    def __del__(self):
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            scheduler.close()


@serve.deployment(name="OpenAIIngress", max_ongoing_requests=1024)
@serve.ingress(api)
class OpenAIIngress:
    """HTTP in front of ``SoupModel``: auth, limits, validation, OpenAI shapes, metrics (module docstring)."""

    def __init__(self, model, options: ServeOptions):
        assert isinstance(options, ServeOptions), options  # parsed once, by the application builder
        self.options = options
        self.model = model
        self.streamer = model.options(stream=True)
        self.metrics = EndpointMetrics()
        self.api_keys = options.read_api_keys()
        self._info = None

    async def info(self):
        if self._info is None:
            self._info = await self.model.info.remote()
        return self._info

    def _auth(self, request: Request) -> None:
        if not self.api_keys:
            return
        given = request.headers.get("authorization", "")
        # header values arrive latin-1 decoded: compare bytes (any header is comparable), every key each
        # time, so neither a key's content nor which key matched shows in the timing
        token = given[7:].strip().encode("latin-1") if given.startswith("Bearer ") else b""
        matched = [hmac.compare_digest(token, k) for k in self.api_keys]
        if not any(matched):
            raise APIError(
                401,
                "missing or invalid API key: send 'Authorization: Bearer <key>'",
                None,
                "authentication_error",
                "invalid_api_key",
            )

    def _overloaded(self, e: BackPressureError) -> APIError:
        queued, limit = e.args[:2]  # BackPressureError keeps its fields only in args
        return APIError(
            503,
            f"the server is overloaded ({queued} requests queued, the limit is {limit}); retry later",
            None,
            "server_error",
            "overloaded",
        )

    def _replica_lost(self) -> APIError:
        return APIError(
            503,
            "the model replica decoding this request stopped; it is being replaced: retry",
            None,
            "server_error",
            "replica_failed",
        )

    def _timed_out(self) -> APIError:
        return APIError(
            504, f"no response within {self.options.request_timeout_s:g} s", None, "timeout_error"
        )

    async def _body(self, request: Request):
        """The JSON body within ``max_body_bytes``, well-formed (``parse_json``; its fields are checked by
        ``parse_request``)."""
        limit = self.options.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise APIError(413, f"request body is {declared} bytes; the limit is {limit}", None)
        try:
            raw = await asyncio.wait_for(request.body(), self.options.body_timeout_s)
        except TimeoutError:
            wait = self.options.body_timeout_s
            raise APIError(
                408, f"the request body did not arrive within {wait:g} s", None, "timeout_error"
            ) from None
        if len(raw) > limit:
            raise APIError(413, f"request body is {len(raw)} bytes; the limit is {limit}", None)
        return parse_json(raw)

    @api.get("/healthz")
    async def healthz(self):
        info = await self.info()
        return {"status": "ok", "model": info.model, "objectives": info.objectives}

    @api.get("/metrics")
    async def prometheus(self):
        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @api.get("/v1/models")
    async def models(self, request: Request):
        try:
            self._auth(request)
        except APIError as e:
            return JSONResponse(e.body(), status_code=e.status)
        return {"object": "list", "data": [(await self.info()).card()]}

    @api.post("/v1/completions")
    async def completions(self, request: Request):
        return await self._serve(request, "completion")

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request):
        return await self._serve(request, "chat")

    async def _serve(self, request: Request, kind: str):
        t0, endpoint, mode = time.perf_counter(), request.url.path, "-"
        self.metrics.in_flight.inc()
        status, err_type, streaming = 200, None, False
        try:
            self._auth(request)
            body = await self._body(request)
            info = await self.info()
            req = parse_request(body, kind, info)
            mode = req.mode.value
            if req.stream:
                resp = await self._stream(req, info, endpoint, t0)
                streaming = True
                return resp
            call = self.model.generate.remote(req)
            try:
                out = await asyncio.wait_for(call, self.options.request_timeout_s)
            except TimeoutError:
                call.cancel()
                raise self._timed_out() from None
            if "error" in out:
                raise out["error"]
            self.metrics.served(out["prompt_tokens"], out["completion_tokens"], out["batch_size"])
            use = usage(out["prompt_tokens"], out["completion_tokens"])
            body = response(
                req,
                info.model,
                out["text"],
                out["finish"],
                use,
                out["replica"],
                out["batch_size"],
                out["experts"],
            )
            return JSONResponse(body)
        except (BackPressureError, RayActorError) as e:  # queue full (info too), or the replica died
            err = self._overloaded(e) if isinstance(e, BackPressureError) else self._replica_lost()
            status, err_type = err.status, err.type
            return JSONResponse(err.body(), status_code=err.status, headers={"Retry-After": "1"})
        except APIError as e:
            status, err_type = e.status, e.type
            return JSONResponse(e.body(), status_code=e.status)
        except Exception:  # noqa: BLE001 - a failed batch answers 500; the replica keeps serving
            log.exception("request failed")
            status, err_type = 500, "server_error"
            err = APIError(500, "internal error while generating; see the server log", None, "server_error")
            return JSONResponse(err.body(), status_code=500)
        finally:
            if not streaming:
                self.metrics.in_flight.dec()
                self.metrics.done(endpoint, mode, status, time.perf_counter() - t0, err_type)

    async def _stream(self, req: GenerationRequest, info, endpoint: str, t0: float) -> StreamingResponse:
        """Server-sent events; an error before the first token is a JSON error, a later one an SSE event."""
        gen = self.streamer.stream.remote(req)
        deadline = t0 + self.options.request_timeout_s
        try:
            first = await asyncio.wait_for(gen.__anext__(), max(deadline - time.perf_counter(), 0.001))
        except TimeoutError:
            gen.cancel()
            raise self._timed_out() from None
        if "error" in first:
            raise first["error"]

        routed = first["experts"]

        async def events():
            status, err_type, sent, last, ended = 200, None, False, None, False
            try:
                while True:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        raise TimeoutError
                    try:
                        item = await asyncio.wait_for(gen.__anext__(), remaining)
                    except StopAsyncIteration:
                        break
                    if "error" in item:
                        raise item["error"]
                    last = item
                    if not sent:
                        self.metrics.first_token.observe(time.perf_counter() - t0)
                    data = chunk(req, info.model, item["text"], item["finish"], not sent, None, routed)
                    sent = True
                    yield f"data: {json.dumps(data)}\n\n"
                if last is not None:
                    self.metrics.served(last["prompt_tokens"], last["completion_tokens"], last["batch_size"])
                    if req.include_usage:
                        use = usage(last["prompt_tokens"], last["completion_tokens"])
                        yield f"data: {json.dumps(chunk(req, info.model, None, None, False, use))}\n\n"
                yield "data: [DONE]\n\n"
                ended = True
            except APIError as e:
                status, err_type, ended = e.status, e.type, True
                yield f"data: {json.dumps(e.body())}\n\n"
            except (TimeoutError, RayActorError) as e:
                gen.cancel()
                err = self._timed_out() if isinstance(e, TimeoutError) else self._replica_lost()
                status, err_type = err.status, err.type
                yield f"data: {json.dumps(err.body())}\n\n"
            except Exception:  # noqa: BLE001
                log.exception("stream failed")
                status, err_type = 500, "server_error"
                yield f"data: {json.dumps(APIError(500, 'internal error', None, 'server_error').body())}\n\n"
            finally:
                if not ended:  # the client went away (or the stream failed): free its rows on the replica
                    gen.cancel()
                self.metrics.in_flight.dec()
                self.metrics.done(endpoint, req.mode.value, status, time.perf_counter() - t0, err_type)

        return _EventStream(events(), media_type="text/event-stream")
