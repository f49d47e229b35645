"""Replica-loss and overload settings of the two deployments, in one place.

The ``@serve.deployment`` decorators use them (what ``compose_app`` deploys), and ``serve/config.yaml``
and ``infra/k8s/rayservice.yaml`` repeat them (a unit test keeps the three equal):

- at least two replicas of each deployment, so losing one leaves another answering;
- ``max_queued_requests`` bounds the queue at every caller (the proxy for the ingress, the ingress's
  handle for the models): beyond it a request is refused at once with 503 and ``Retry-After``
  (``backpressure_config``) instead of waiting behind the others;
- ``graceful_shutdown_timeout_s`` exceeds the longest a request may run (the ingress gives a model
  ``request_timeout_s``, then cancels it), so a scale-down drains in-flight requests instead of
  force-killing them; ``graceful_shutdown_wait_loop_s`` is how often the draining replica looks;
- ``health_check_period_s`` / ``health_check_timeout_s``: a hung replica is replaced within ~20 s
  (a dead one is noticed at once: its callers get ``ActorDiedError`` and stop routing to it).
"""

from __future__ import annotations

from typing import Any

from serve.api import RETRY_AFTER_S

MIN_REPLICAS = 2
REQUEST_TIMEOUT_S = 30.0  # ServeAppArgs.request_timeout_s default: the ingress's wait for a model
GRACEFUL_SHUTDOWN_TIMEOUT_S = 45.0  # > REQUEST_TIMEOUT_S plus a batch's last chunk

_COMMON: dict[str, Any] = {
    "backpressure_config": {"status_code": 503, "retry_after_s": RETRY_AFTER_S},
    "graceful_shutdown_wait_loop_s": 1.0,
    "graceful_shutdown_timeout_s": GRACEFUL_SHUTDOWN_TIMEOUT_S,
    "health_check_period_s": 5.0,
    "health_check_timeout_s": 15.0,
}

#: ``RecommendationIngress``: async FastAPI, cheap per request; the proxy queues at most 128 more.
INGRESS_OPTIONS: dict[str, Any] = {
    "max_ongoing_requests": 256,
    "max_queued_requests": 128,
    "autoscaling_config": {
        "min_replicas": MIN_REPLICAS,
        "initial_replicas": MIN_REPLICAS,
        "max_replicas": 3,
        "target_ongoing_requests": 64,
        "upscale_delay_s": 10,
        "downscale_delay_s": 120,
    },
    **_COMMON,
}

#: ``ServiceModels``: one inference thread per replica; each ingress queues at most 64 calls more.
MODELS_OPTIONS: dict[str, Any] = {
    "max_ongoing_requests": 64,
    "max_queued_requests": 64,
    "autoscaling_config": {
        "min_replicas": MIN_REPLICAS,
        "initial_replicas": MIN_REPLICAS,
        "max_replicas": 4,
        "target_ongoing_requests": 16,
        "upscale_delay_s": 10,
        "downscale_delay_s": 120,
    },
    **_COMMON,
}

#: Inference work waiting in one model replica (payloads): beyond it a call is answered 503 at once.
MAX_PENDING_PAYLOADS = 400
