"""Every registry unit test signs and verifies with a key of its own (never ``~/.mora/signing_key``)."""

from __future__ import annotations

import secrets

import pytest


@pytest.fixture(autouse=True)
def signing_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh manifest signing key in ``MORA_SIGNING_KEY``; unsigned manifests refused."""
    key = secrets.token_hex(32)
    monkeypatch.setenv("MORA_SIGNING_KEY", key)
    monkeypatch.delenv("MORA_ACCEPT_UNSIGNED", raising=False)
    return key
