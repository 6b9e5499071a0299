"""Meter with plain mitmdump: ``mitmdump -s addons/meterproxy_addon.py``.

The same addon as ``meterproxy start``. Options (``--set NAME=VALUE``): ``meterproxy_home``,
``meterproxy_routes`` (HOST[:PORT]=PROVIDER, repeatable), ``meterproxy_upstream_ca``,
``meterproxy_store`` (none, preview, full), ``meterproxy_inject_stream_usage`` (true/false),
``meterproxy_forward`` and ``meterproxy_forward_previews`` (receipts to LockN Logger; the
``LOCKN_LOGGER_*`` variables and config.toml's ``[forward]`` apply too).
``meterproxy_jsonl`` (false: no JSONL mirror), ``meterproxy_auth`` (USER:PASS, repeatable:
required from clients of other machines; without it they are refused).
Unless ``confdir`` is set, mitmproxy uses the meterproxy home's ``certs/`` as its CA store.
mitmdump prints each flow's URL (query string included) itself, unredacted:
``--set flow_detail=0`` keeps that off the terminal.
"""

from meterproxy.app.addon import MeterAddon
from meterproxy.app.gateway import Gateway

_meter = MeterAddon()
addons = [Gateway(_meter), _meter]
