"""A webhook POST's request line and fixed headers: a plain URL cut at its origin (parsed once per origin) gives
the very bytes that parsing the whole URL with ``urlsplit`` gives, and any other URL is parsed whole."""

from __future__ import annotations

import pytest

from services.notifier.webhook_http import TransportError, WebhookHttpClient

URLS = [
    "https://hooks.example.lu/luccs/LU0001",
    "https://hooks.example.lu",
    "https://hooks.example.lu/",
    "http://hooks.example.lu:8080/a/b?eori=LU1&x=%20y",
    "https://hooks.example.lu/path?",  # an empty query: urlsplit drops the "?"
    "https://hooks.example.lu?only=query",
    "https://hooks.example.lu/p#fragment",
    "https://hooks.example.lu/p?q=1#fragment?not=query",
    "https://user:secret@hooks.example.lu:8443/p",
    "https://[2001:db8::1]:8443/ipv6",
    "HTTPS://Hooks.Example.LU/Mixed/Case",
    "https://hooks.example.lu/caf\u00e9",  # not plain ASCII: parsed whole
    "https://hooks.example.lu/with space",  # a space: parsed whole (and refused as a request line would be)
]


def _client() -> WebhookHttpClient:
    return WebhookHttpClient(allow_private=True)


def _whole(url: str) -> tuple[str, str, int, bytes] | str:
    try:
        return _client()._parse_whole(url)
    except (TransportError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"


def _cut(client: WebhookHttpClient, url: str) -> tuple[str, str, int, bytes] | str:
    try:
        return client._parse(url)
    except (TransportError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"


@pytest.mark.parametrize("url", URLS)
def test_a_url_cut_at_its_origin_gives_the_request_parsing_it_whole_gives(url: str) -> None:
    client = _client()
    _cut(client, "https://hooks.example.lu/warm/the/origin/cache")
    assert _cut(client, url) == _whole(url)
    assert _cut(client, url) == _whole(url)  # from the cache


@pytest.mark.parametrize("url", ["ftp://hooks.example.lu/x", "https:///no-host", "https://hooks.example.lu:99999/x",
                                 "https://hooks.example.lu:port/x"])
def test_a_url_refused_is_refused_with_the_same_message(url: str) -> None:
    assert _cut(_client(), url) == _whole(url)
    assert isinstance(_whole(url), str)


def test_plain_urls_are_kept_per_origin_not_per_url() -> None:
    client = _client()
    for n in range(1000):
        client._parse(f"https://hooks.example.lu/luccs/LU{n:012d}")
    assert len(client._urls) == 1
