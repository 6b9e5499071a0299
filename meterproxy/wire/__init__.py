"""Stage 1, the wire: what the proxy sees of a call, taken on the event loop in O(1) per chunk.

Owns the response tap (bounded, decoded copy of a body), the :class:`~meterproxy.wire.exchange.Exchange`
handed to the meter, stream framing (SSE events, NDJSON lines), the header lists, attribution
(agent, session, task, client process), the route table and the stream-usage rewrite.
"""
