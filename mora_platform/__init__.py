"""MOrA Platform: rightsizing recommendations for Kubernetes services.

Pure modules (data, models, recommend) import no I/O and no Ray; I/O lives in
``storage``, ``registry`` and the collectors; Ray lives in ``jobs/``, ``tune/`` and ``serve/``.
"""

__version__ = "0.1.0"
