"""The model side of serving: one soup bundle loaded once as a mixed model; requests with any μ, mode, γ, α
and sampling settings decoded together in one batch (each request its own row plan over the per-row
coefficient layer: no per-request merge, no per-request model copy).

    engine = SoupEngine(ServeOptions(soup="models:/soup-demo@production"))
    job = engine.prepare(request)              # APIError(400) if the prompt does not fit the context
    scheduler = Scheduler(engine, options)     # serving.scheduler: the continuous-batching decode loop

Modes (``methods.Mode``) over the bundle's n backbones (and its value models, stacked after them),
``decoding.plans``: ``bone_soup`` = unguided decoding at c = (1 + α)B(β)⁻¹μ; ``rewarded_soups`` = unguided at
c = (1 + α)μ (the RS rule on the same backbones); ``mage_i_m`` / ``mage_i`` / ``mage_e_m`` / ``mage_e`` = the
Bone Soup base plus γ × guidance (docs/methods/mage.md); ``mod`` = Σ_i w_i log π_i over the backbones,
w = B⁻¹μ for a Bone Soup bundle; ``moc`` / ``ric`` = the bundle's conditioned policy alone on the prompt
relabeled for μ (``conditioning``); ``hoe`` = preference routing over the bundle's HoE experts (LoRA
experts per row, router experts per token; ``soupkitchen.hoe``). Requests arrive validated
(``serving.protocol``): the engine turns them into ``decoding.RowRequest`` values and does not check μ,
mode, γ or α again.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from soupkitchen.artifacts import fetch
from soupkitchen.decoding import AdapterRoles, DecodeSettings, RowPlan, RowRequest
from soupkitchen.generation import clean_text
from soupkitchen.merging import load_bundle
from soupkitchen.methods import Mode
from soupkitchen.models import resolve_device
from soupkitchen.serving.options import ServeOptions
from soupkitchen.serving.protocol import APIError, GenerationRequest, SoupInfo


@dataclass
class Job:
    """A request ready to decode: its formatted prompt, token count, row plan and decoding settings."""

    request: GenerationRequest
    text: str
    prompt_tokens: int
    plan: RowPlan
    settings: DecodeSettings
    experts: dict[str, float] | None = None  # mode hoe: the experts the plan routes to and their ω_r


@dataclass
class Delta:
    """New text of one request after a decoding step; ``finish`` ("stop" | "length") on its last step;
    ``batch_size``: the mean number of requests its decode steps so far shared the batch with (itself
    included)."""

    text: str
    finish: str | None
    prompt_tokens: int
    completion_tokens: int
    batch_size: float


class TextStream:
    """Incremental text of one row: cut at the first stop string, stripped as the final text is.

    Until the end, trailing whitespace, a tail that could begin a stop string and an incomplete UTF-8
    character (U+FFFD) are held back, so the concatenated deltas equal the final text.
    """

    def __init__(self, stop: tuple[str, ...]):
        self.stop, self.sent = stop, ""

    def update(self, text: str, final: bool) -> str:
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
        assert isinstance(options, ServeOptions), options  # checked when built (ServeOptions.from_args)
        self.options = options
        if options.torch_threads:
            torch.set_num_threads(options.torch_threads)
        self.device = resolve_device(options.device)
        self.bundle = load_bundle(fetch(options.soup))
        base, self.tokenizer = self.bundle.load_base_model(device=self.device)
        # ``prepare`` runs on the replica's request thread while the decode thread pads batches: a fast
        # tokenizer's padding/truncation state is shared mutable state (one call's no_padding() unpads the
        # other's batch), so each thread gets its own copy
        self.request_tokenizer = copy.deepcopy(self.tokenizer)
        self.model = self.bundle.mixed_model(base).eval()
        b = self.bundle
        self.m = b.width
        limit = getattr(self.model.config, "max_position_embeddings", None) or 2048
        ctx = min(options.context_length or limit, limit)
        modes = [md for md in Mode if md is not Mode.BONE_SOUP or b.beta is not None]
        if not b.value_names:
            modes = [md for md in modes if not md.explicit]
        self.conditioning = {c.method: c.conditioning for c in b.conditioned}
        modes = [md for md in modes if not md.conditioned or md.value in self.conditioning]
        if b.hoe is None:
            modes = [md for md in modes if md is not Mode.HOE]
        hoe, served = b.hoe_stack(), b.hoe_served
        experts = tuple(_expert_card(e) for e in b.hoe.manifest.experts if e.name in served) if b.hoe else ()
        self.info = SoupInfo(
            model=options.served_name,
            objectives=list(b.objectives),
            modes=modes,
            default_mode=Mode.BONE_SOUP if b.beta is not None else Mode.REWARDED_SOUPS,
            gamma=1.0 if b.gamma is None else float(min(b.gamma, options.max_gamma)),
            alpha=float(min(b.alpha, options.max_alpha)),
            beta=b.beta,
            context_length=ctx,
            default_max_tokens=options.default_max_tokens,
            max_tokens_limit=min(options.max_tokens_limit, ctx - 1),
            max_gamma=options.max_gamma,
            max_alpha=options.max_alpha,
            experts=experts,
        )
        use_template = bool(b.base.get("model", {}).get("use_chat_template", True))
        self.chat_template = use_template and bool(getattr(self.tokenizer, "chat_template", None))
        # the bundle's roles; rewarded_soups merges with B = I, each request brings its own α
        self.roles = AdapterRoles(
            self.m,
            list(range(b.n)),
            b.beta,
            values=b.value_indices,
            conditioned=b.conditioned_indices,
            hoe=(hoe, served) if hoe else None,
        )
        self.ensemble_weights = "bone_soup" if b.beta is not None else "mu"

    def plan(self, req: GenerationRequest) -> RowPlan:
        """The row plan of a request: its mode over the bundle's adapters at its μ, γ, α (validated by the
        protocol; ``RowRequest`` asserts them)."""
        gamma = req.gamma if req.mode.guided else 0.0
        request = RowRequest(req.mode, req.preference, gamma, req.alpha)
        return self.roles.plan_for(request, ensemble_weights=self.ensemble_weights)

    def format(self, req: GenerationRequest) -> str:
        """The model's input text. A conditioned mode (MOC, RiC) relabels the user's text for μ first, as its
        policy was trained (Eq. 3): the completion prompt, or the last user message of a chat."""
        cond = self.conditioning.get(req.mode.value) if req.mode.conditioned else None
        mu = req.preference.array if cond else None
        if req.kind == "completion":
            return cond.prompt_for(req.prompt, mu) if cond else req.prompt
        messages = list(req.messages)
        if cond:
            last = max(i for i, m in enumerate(messages) if m["role"] == "user")
            messages[last] = {**messages[last], "content": cond.prompt_for(messages[last]["content"], mu)}
        if self.chat_template:
            return self.request_tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"

    def prepare(self, req: GenerationRequest) -> Job:
        """Format and measure the prompt, build the plan and settings; APIError(400) when it cannot fit."""
        text = self.format(req)
        n = len(self.request_tokenizer(text, add_special_tokens=False)["input_ids"])
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
        plan, experts = self.plan(req), None
        if req.mode is Mode.HOE:  # what the plan's row holds, reported with the response
            stack, names = self.roles.hoe
            experts = {k: round(v, 6) for k, v in stack.selected(plan.components[0].c, names).items()}
        return Job(req, text, n, plan, settings, experts)


def _expert_card(e) -> dict:
    """A served HoE expert as ``/v1/models`` lists it."""
    return {"name": e.name, "kind": e.kind, "preference": e.preference} | (
        {"votes": e.votes} if e.votes else {}
    )
