"""Rolling-origin backtest of request recommenders: the platform against VPA, KRR, Crane and simple rules.

Pure logic (no S3 or Prometheus; Ray only in ``runner``, when asked): ``baselines`` holds the peers' algorithms behind one
``Recommender`` interface, ``engine`` replays history origin by origin, ``metrics`` scores requests
against the usage that followed, ``report`` writes the table and ``backtest.json``, ``plots`` the PNGs;
``runner`` runs the series in this process or one Ray task each (Ray imported only when asked).
"""

from __future__ import annotations
