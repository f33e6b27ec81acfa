"""The Ray Serve application Serve imports: an OpenAI-compatible endpoint serving one soup at every
preference and mode (the deployments live in ``soupkitchen.serving``; see ``serving/deployment.py``).

    serve run serve/config.yaml                       # local (edit args.soup), or:
    serve run serve.app:app soup=models:/soup-demo@production
    serve deploy serve/config.yaml                    # a running cluster; infra/k8s/rayservice-serve.yaml

``app`` is the application builder: Serve calls it with the ``args`` (``serving.ServeOptions`` fields), which
are parsed here, once, and the typed options are bound to both deployments (``serving.builder.build_app``).
"""

from soupkitchen.serving.builder import build_app
from soupkitchen.serving.options import ServeOptions


def app(args: dict | None = None):
    """``serve.app:app``: ``args`` are ``ServeOptions`` (``soup`` defaults to the ``SOUPKITCHEN_SOUP_URI``
    environment variable); the model deployment autoscales per its options."""
    return build_app(ServeOptions.from_args(args))
