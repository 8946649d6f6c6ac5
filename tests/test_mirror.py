"""Mirroring: Envoy's ``-shadow`` authority (the sending is exercised in test_chaos_faults.py)."""

from __future__ import annotations

import pytest

from gateway._mirror import shadow_authority


@pytest.mark.parametrize("authority, shadow", [
    (b"reviews:9080", b"reviews-shadow:9080"),
    (b"reviews.bookinfo.svc.cluster.local:9080", b"reviews.bookinfo.svc.cluster.local-shadow:9080"),
    (b"reviews", b"reviews-shadow"),
    (b"[::1]:80", b"[::1]-shadow:80"),
    (b"10.0.0.1:80", b"10.0.0.1-shadow:80"),
])
def test_shadow_is_appended_to_the_host_before_the_port(authority: bytes, shadow: bytes) -> None:
    assert shadow_authority(authority) == shadow
