"""``meterproxy serve``: the web dashboard and the JSON API over the ledger (read only).

:mod:`~meterproxy.web.app` builds the Starlette app (the views, the token gate),
:mod:`~meterproxy.web.params` reads query parameters, :mod:`~meterproxy.web.events` streams new
calls, :mod:`~meterproxy.web.metrics` writes the Prometheus text, :mod:`~meterproxy.web.budgets`
gives the budgets' status and :mod:`~meterproxy.web.server` runs it all on uvicorn. The numbers
come from :mod:`meterproxy.reports`, as the CLI's do; ``static/`` holds the page and its assets.
"""
