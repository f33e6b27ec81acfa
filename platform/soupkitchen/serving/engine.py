"""The model side of serving: one soup bundle loaded once as a mixed model; requests with any μ, mode, γ, α
and sampling settings decoded together in one batch (each request its own row plan over the per-row
coefficient layer: no per-request merge, no per-request model copy).

    engine = SoupEngine(ServeOptions(soup="models:/soup-demo@production"))
    job = engine.prepare(request)              # APIError(400) if the prompt does not fit the context
    run = engine.start([job, ...])
    while not run.finished:
        deltas = run.step()                    # per request: Delta(text, finish, ...) or None once done

Modes over the bundle's n backbones (and its value models, stacked after them), ``decoding.plans``:
``bone_soup`` = plain decoding at c = (1 + α)B(β)⁻¹μ; ``rewarded_soup`` = plain at c = (1 + α)μ (the RS rule
on the same backbones); ``mage_i_m`` / ``mage_i`` / ``mage_e_m`` / ``mage_e`` = that base plus γ × guidance
(notes/mage.md Eq. 25-26); ``mod`` = Σ_i w_i log π_i over the backbones, w = B⁻¹μ for a Bone Soup bundle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from soupkitchen.config import ConfigError, _num, from_dict, to_dict
from soupkitchen.serving.protocol import MODES, APIError, GenerationRequest, SoupInfo


@dataclass
class ServeOptions:
    """The application's settings (``serve/config.yaml`` ``args``; errors name ``args.<key>``).

    ``soup``: bundle URI (``models:/name@alias``, ``runs:/``, ``s3://``) or local path; ``model_name``: the
    served model id (default: derived from ``soup``). Limits: ``max_tokens_limit`` per request,
    ``context_length`` (0: the model's), ``max_body_bytes``, ``request_timeout_s``, ``max_gamma`` /
    ``max_alpha``. ``api_key_env``: if that environment variable is set, requests need ``Authorization:
    Bearer <its value>``. Batching: ``max_batch_size`` requests per decoding batch, waiting at most
    ``batch_wait_timeout_s`` to fill one. Replicas: ``num_cpus`` / ``num_gpus`` each, autoscaled between
    ``min_replicas`` and ``max_replicas`` on ``target_ongoing_requests`` per replica (Ray Serve's
    ``autoscaling_config``: averaged over ``look_back_period_s``, reported every ``metrics_interval_s``).
    """

    soup: str = ""
    model_name: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    default_max_tokens: int = _num(64, 1)
    max_tokens_limit: int = _num(512, 1)
    min_tokens: int = _num(1, 0)
    context_length: int = _num(0, 0)
    max_body_bytes: int = _num(1_000_000, 1024)
    request_timeout_s: float = _num(120.0, 0.0)
    max_gamma: float = _num(10.0, 0.0)
    max_alpha: float = _num(1.0, 0.0)
    api_key_env: str = "SOUPKITCHEN_API_KEY"
    max_batch_size: int = _num(16, 1)
    batch_wait_timeout_s: float = _num(0.02, 0.0)
    torch_threads: int = _num(0, 0)
    num_cpus: float = _num(1.0, 0.0)
    num_gpus: float = _num(0.0, 0.0)
    min_replicas: int = _num(1, 0)
    max_replicas: int = _num(2, 1)
    initial_replicas: int | None = _num(None, 0)
    target_ongoing_requests: float = _num(8.0, 0.0)
    max_ongoing_requests: int = _num(64, 1)
    upscale_delay_s: float = _num(5.0, 0.0)
    downscale_delay_s: float = _num(30.0, 0.0)
    metrics_interval_s: float = _num(10.0, 0.0)
    look_back_period_s: float = _num(30.0, 0.0)
    ingress_replicas: int = _num(1, 1)

    @classmethod
    def from_args(cls, args: dict | None) -> ServeOptions:
        import os

        import yaml

        # `serve run serve.app:app key=value` passes strings: read them as YAML scalars (0.5, 4, true).
        args = {
            k: yaml.safe_load(v) if isinstance(v, str) and k != "soup" else v for k, v in (args or {}).items()
        }
        if not args.get("soup"):
            args["soup"] = os.environ.get("SOUPKITCHEN_SOUP_URI", "")
        return from_dict(cls, args, "args").check()

    def check(self) -> ServeOptions:
        """Types and ranges (the fields' ``_num`` bounds, as ``from_dict`` checks them) and cross-field rules;
        also for options built in code rather than read from ``args``."""
        from_dict(type(self), to_dict(self), "args")
        if not self.soup:
            raise ConfigError("args.soup", "name the soup bundle (URI or path), or set SOUPKITCHEN_SOUP_URI")
        if self.default_max_tokens > self.max_tokens_limit:
            raise ConfigError("args.default_max_tokens", "must be <= args.max_tokens_limit")
        if self.max_replicas < max(self.min_replicas, 1):
            raise ConfigError("args.max_replicas", "must be >= args.min_replicas and >= 1")
        return self

    @property
    def served_name(self) -> str:
        if self.model_name:
            return self.model_name
        name = self.soup.rstrip("/").rsplit("/", 1)[-1]
        return name.split("@", 1)[0] or "soup"


@dataclass
class Job:
    """A request ready to decode: its formatted prompt, token count, row plan and decoding settings."""

    request: GenerationRequest
    text: str
    prompt_tokens: int
    plan: object
    settings: object


@dataclass
class Delta:
    """New text of one request after a decoding step; ``finish`` ("stop" | "length") on its last step."""

    text: str
    finish: str | None
    prompt_tokens: int
    completion_tokens: int
    batch_size: int


class TextStream:
    """Incremental text of one row: cut at the first stop string, stripped as the final text is.

    Until the end, trailing whitespace, a tail that could begin a stop string and an incomplete UTF-8
    character (U+FFFD) are held back, so the concatenated deltas equal the final text.
    """

    def __init__(self, stop: tuple[str, ...]):
        self.stop, self.sent = stop, ""

    def update(self, text: str, final: bool) -> str:
        from soupkitchen.generation import clean_text

        target = clean_text(text, list(self.stop))
        if not final:
            target = target.rstrip("\ufffd").rstrip()
            for s in self.stop:
                for k in range(min(len(s) - 1, len(target)), 0, -1):
                    if target.endswith(s[:k]):
                        target = target[:-k].rstrip()
                        break
        if not target.startswith(self.sent):  # the tokenizer re-spelled earlier text: wait for the end
            if not final:
                return ""
            target = self.sent + target[len(self.sent) :]
        delta, self.sent = target[len(self.sent) :], target
        return delta


class SoupEngine:
    """A soup bundle as one mixed model (module docstring); ``info`` is what requests are checked against."""

    def __init__(self, options: ServeOptions):
        from soupkitchen.artifacts import fetch
        from soupkitchen.merging import load_bundle
        from soupkitchen.models import resolve_device

        self.options = options.check()
        if options.torch_threads:
            torch.set_num_threads(options.torch_threads)
        self.device = resolve_device(options.device)
        self.bundle = load_bundle(fetch(options.soup))
        base, self.tokenizer = self.bundle.load_base_model(device=self.device)
        self.model = self.bundle.mixed_model(base).eval()
        b = self.bundle
        self.m = b.n + len(b.value_names)
        limit = getattr(self.model.config, "max_position_embeddings", None) or 2048
        ctx = min(options.context_length or limit, limit)
        modes = [md for md in MODES if md != "bone_soup" or b.beta is not None]
        if not b.value_names:
            modes = [md for md in modes if not md.startswith("mage_e")]
        self.info = SoupInfo(
            model=options.served_name,
            objectives=list(b.objectives),
            modes=modes,
            default_mode="bone_soup" if b.beta is not None else "rewarded_soup",
            gamma=1.0 if b.gamma is None else float(min(b.gamma, options.max_gamma)),
            alpha=float(min(b.alpha, options.max_alpha)),
            beta=b.beta,
            context_length=ctx,
            default_max_tokens=options.default_max_tokens,
            max_tokens_limit=min(options.max_tokens_limit, ctx - 1),
            max_gamma=options.max_gamma,
            max_alpha=options.max_alpha,
        )
        use_template = bool(b.base.get("model", {}).get("use_chat_template", True))
        self.chat_template = use_template and bool(getattr(self.tokenizer, "chat_template", None))

    def roles(self, mode: str, alpha: float):
        from soupkitchen.decoding import AdapterRoles

        beta = None if mode == "rewarded_soup" else self.bundle.beta
        return AdapterRoles(self.m, list(range(self.bundle.n)), beta, alpha, values=self.bundle.value_indices)

    def plan(self, req: GenerationRequest):
        """The row plan of a request: its mode over the bundle's adapters at its μ, γ, α."""
        plain = req.mode in ("bone_soup", "rewarded_soup")
        weights = "bone_soup" if self.bundle.beta is not None else "mu"
        return self.roles(req.mode, req.alpha).plan(
            "plain" if plain else req.mode,
            req.preference,
            0.0 if plain else req.gamma,
            ensemble_weights=weights,
        )

    def format(self, req: GenerationRequest) -> str:
        if req.kind == "completion":
            return req.prompt
        if self.chat_template:
            return self.tokenizer.apply_chat_template(
                req.messages, tokenize=False, add_generation_prompt=True
            )
        return "".join(f"{m['role']}: {m['content']}\n" for m in req.messages) + "assistant:"

    def prepare(self, req: GenerationRequest) -> Job:
        """Format and measure the prompt, build the plan and settings; APIError(400) when it cannot fit."""
        from soupkitchen.decoding import DecodeSettings

        text = self.format(req)
        n = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        ctx = self.info.context_length
        if n == 0:
            raise APIError(400, "the prompt is empty after tokenisation", "prompt")
        if n + req.max_tokens > ctx:
            param = "messages" if req.kind == "chat" else "prompt"
            raise APIError(
                400,
                f"the prompt is {n} tokens; with max_tokens {req.max_tokens} that exceeds the context length "
                f"{ctx}: shorten the prompt or lower max_tokens",
                param,
                code="context_length_exceeded",
            )
        settings = DecodeSettings(
            greedy=req.greedy,
            temperature=req.temperature if req.temperature > 0 else 1.0,
            top_k=req.top_k,
            top_p=req.top_p,
            max_new_tokens=req.max_tokens,
            min_new_tokens=min(self.options.min_tokens, req.max_tokens),
            stop=req.stop,
            seed=req.seed,
        )
        return Job(req, text, n, self.plan(req), settings)

    def start(self, jobs: list[Job]) -> BatchRun:
        return BatchRun(self, jobs)


class BatchRun:
    """One decoding batch of jobs, stepped token by token (``Decoder``), with each row's text deltas."""

    def __init__(self, engine: SoupEngine, jobs: list[Job]):
        from soupkitchen.decoding import Decoder

        self.engine, self.jobs = engine, jobs
        self.decoder = Decoder(
            engine.model,
            engine.tokenizer,
            [j.text for j in jobs],
            [j.plan for j in jobs],
            [j.settings for j in jobs],
            max_prompt_tokens=engine.info.context_length,
            device=engine.device,
        )
        self.streams = [TextStream(j.request.stop) for j in jobs]
        self.counts = [0] * len(jobs)
        self.closed = [False] * len(jobs)

    @property
    def finished(self) -> bool:
        return all(self.closed)

    def step(self) -> list[Delta | None]:
        """One token for every open request: its Delta (finish set on its last), None for closed ones."""
        tok = self.engine.tokenizer
        dec = self.decoder
        _, done = dec.step()
        ending = dec.finished
        out: list[Delta | None] = []
        for r, job in enumerate(self.jobs):
            if self.closed[r]:
                out.append(None)
                continue
            self.counts[r] += 1
            last = bool(done[r]) or ending
            gen = dec.batch.gen[r, : self.counts[r]]
            text = self.streams[r].update(tok.decode(gen, skip_special_tokens=True), final=last)
            finish = None
            if last:
                self.closed[r] = True
                hit_stop = bool(dec.batch.eos[r]) or self.counts[r] < job.request.max_tokens
                finish = "stop" if hit_stop else "length"
            out.append(Delta(text, finish, job.prompt_tokens, self.counts[r], len(self.jobs)))
        return out
