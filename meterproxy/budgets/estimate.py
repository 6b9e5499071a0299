"""The bounded worst case of a call, from its request alone (on the event loop: no JSON parsing).

Only the first and last :data:`SCAN` bytes of the body are searched: SDKs put ``model`` and the
output cap at one end or the other of the JSON (OpenAI's SDK writes ``messages`` first). Input
tokens are estimated from the body's size (:data:`BYTES_PER_TOKEN`), which overestimates text and
so keeps the reservation on the safe side.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCAN = 4096
BYTES_PER_TOKEN = 3
"""Text runs about 4 bytes per token and JSON adds quoting: 3 keeps the estimate high."""

_FIELDS = re.compile(
    rb'"(model|max_tokens|max_completion_tokens|max_output_tokens|maxOutputTokens|num_predict)"\s*:\s*'
    rb'(?:"([^"\\]{1,200})"|(\d{1,9}))'
)
_PATH_MODEL = re.compile(r"/(?:models|deployments)/([^/:?]+)")


@dataclass(frozen=True, slots=True)
class CallHead:
    """What the request says about its size: model, input estimate and output cap (None: not set)."""

    model: str | None
    input_tokens: int
    max_output_tokens: int | None


def read_head(path: str, body: bytes) -> CallHead:
    """The model (body, else path), estimated input tokens and the requested output cap."""
    model: str | None = None
    cap: int | None = None
    parts = (body,) if len(body) <= 2 * SCAN else (body[:SCAN], body[-SCAN:])
    for part in parts:
        for match in _FIELDS.finditer(part):
            name, text, number = match.groups()
            if name == b"model":
                if text and model is None:
                    model = text.decode("utf-8", "replace")
            elif number is not None:
                cap = max(cap or 0, int(number))
    if model is None and (found := _PATH_MODEL.search(path)):
        model = found.group(1)
    return CallHead(model, len(body) // BYTES_PER_TOKEN + 1, cap)
