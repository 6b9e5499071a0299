"""Run as ``python tests/http_clients.py LIBRARY URL``: POST a chat request with one HTTP library
and print the status and the body received (base64, JSON). The library is configured only by the
environment (``HTTPS_PROXY``, CA bundle variables), as ``meterproxy run`` sets it."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import urllib.request

BODY = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "Describe the image"}]}).encode()
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-proj-TESTKEYdoNotStore0123456789abcdefABCDEF"}


def with_requests(url: str) -> tuple[int, bytes]:
    import requests

    response = requests.post(url, data=BODY, headers=HEADERS, timeout=30)
    return response.status_code, response.content


def with_urllib(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(urllib.request.Request(url, BODY, HEADERS), timeout=30) as response:
        return response.status, response.read()


def with_httpx(url: str) -> tuple[int, bytes]:
    import httpx

    response = httpx.post(url, content=BODY, headers=HEADERS, timeout=30)
    return response.status_code, response.content


def with_aiohttp(url: str) -> tuple[int, bytes]:
    import aiohttp

    async def call() -> tuple[int, bytes]:
        async with aiohttp.ClientSession(trust_env=True) as session:
            async with session.post(url, data=BODY, headers=HEADERS, auto_decompress=False) as response:
                return response.status, await response.read()

    return asyncio.run(call())


if __name__ == "__main__":
    library, target = sys.argv[1], sys.argv[2]
    status, body = globals()[f"with_{library}"](target)
    print(json.dumps({"status": status, "body": base64.b64encode(body).decode()}))
