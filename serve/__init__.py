"""Ray Serve application of MOrA: one HTTP endpoint for every service's recommendations.

``serve.app:build_app`` composes the FastAPI ingress (``serve.ingress``, routes and guards in
``serve.http_api``, request models in ``serve.api``) with one multiplexed model deployment
(``serve.model_deployment``, loading logic in ``serve.model_slots``). Importing starts nothing.
"""
