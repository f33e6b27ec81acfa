"""``build_app``: the endpoint as a Ray Serve application, from one parsed ``ServeOptions``.

    from soupkitchen.serving import ServeOptions
    from soupkitchen.serving.builder import build_app

    serve.run(build_app(ServeOptions(soup="models:/soup-demo@production")), route_prefix="/")

``serve/app.py`` wraps it as the application builder Serve imports (``serve run serve.app:app key=value``,
``serve/config.yaml``): it parses the ``args`` once and calls ``build_app``. The options object is bound to
both deployments, so its ``soup`` (``SOUPKITCHEN_SOUP_URI`` resolved where the app is built: replicas may not
see that environment) and every limit reach the replicas as parsed here.
"""

from __future__ import annotations

from ray.serve import Application

from soupkitchen.serving.deployment import OpenAIIngress, SoupModel
from soupkitchen.serving.options import ServeOptions


def autoscaling_config(options: ServeOptions) -> dict:
    """Ray Serve's ``autoscaling_config`` of the model deployment."""
    auto = {
        "min_replicas": options.min_replicas,
        "max_replicas": options.max_replicas,
        "target_ongoing_requests": options.target_ongoing_requests,
        "upscale_delay_s": options.upscale_delay_s,
        "downscale_delay_s": options.downscale_delay_s,
        "metrics_interval_s": options.metrics_interval_s,
        "look_back_period_s": options.look_back_period_s,
    }
    if options.initial_replicas is not None:
        auto["initial_replicas"] = options.initial_replicas
    return auto


def build_app(options: ServeOptions) -> Application:
    """``OpenAIIngress`` in front of the autoscaled ``SoupModel``, both bound to ``options``."""
    assert isinstance(options, ServeOptions), options  # parse args with ServeOptions.from_args first
    model = SoupModel.options(
        ray_actor_options={"num_cpus": options.num_cpus, "num_gpus": options.num_gpus},
        autoscaling_config=autoscaling_config(options),
        max_ongoing_requests=options.max_ongoing_requests,
        max_queued_requests=options.max_queued_requests,
    ).bind(options)
    return OpenAIIngress.options(
        num_replicas=options.ingress_replicas,
        max_ongoing_requests=options.ingress_max_ongoing_requests,
        ray_actor_options={"num_cpus": 0},
    ).bind(model, options)
