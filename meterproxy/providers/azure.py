"""Azure OpenAI (``*.openai.azure.com``, ``*.cognitiveservices.azure.com``) and Azure AI Foundry
(``*.services.ai.azure.com``).

OpenAI's API under ``/openai/deployments/{deployment}/...?api-version=...`` (the request body
often has no ``model``: the deployment name in the path stands in for it; the response body
names the real model), the v1 API under ``/openai/v1/...``, Foundry's model inference under
``/models/...`` and Claude under ``/anthropic/v1/messages``. Other paths on these hosts belong
to other Azure AI services and are API calls. Streams open with a ``prompt_filter_results``
chunk that has no model and no choices.
"""

from __future__ import annotations

import re
from typing import Any

from meterproxy.providers.base import EndpointKind, RequestInfo
from meterproxy.providers.openai import OpenAICompatible

_DEPLOYMENT = re.compile(r"/openai/deployments/([^/]+)/")
MODEL_PREFIXES = ("/openai/", "/models/", "/anthropic/")


class AzureProvider(OpenAICompatible):
    def __init__(self) -> None:
        super().__init__("azure")

    def endpoint_kind(self, method: str, path: str) -> EndpointKind:
        if not path.startswith(MODEL_PREFIXES):
            return "api"
        return super().endpoint_kind(method, path)

    def parse_request(self, path: str, data: dict[str, Any]) -> RequestInfo:
        info = super().parse_request(path, data)
        if info.model is None and (match := _DEPLOYMENT.search(path)):
            info.model = match.group(1)
        return info
