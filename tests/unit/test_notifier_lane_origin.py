"""Planning works a delivery's lane out once per scheme and authority: the same lane as from the whole URL."""

from __future__ import annotations

import pytest

from services.notifier.domain import lane_of, url_origin
from shared.events import DeliveryChannel


@pytest.mark.parametrize("address", [
    "https://Hooks.example:8443/eo/LU1?x=1", "http://127.0.0.1:9000/hook/5", "https://h.example?x=/a",
    "https://h.example#/a", "https://u:p@h.example/a", "https://[::1]:8443/a/b", "https://h.example",
    "https://h.example:99999/a", "not a url/at all",
])
def test_the_lane_from_the_origin_is_the_lane_from_the_url(address: str) -> None:
    assert lane_of(DeliveryChannel.WEBHOOK, url_origin(address) or address) == lane_of(DeliveryChannel.WEBHOOK, address)
