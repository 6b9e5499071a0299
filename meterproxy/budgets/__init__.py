"""Stage 6b, budgets: live spend per scope and window, checked in flight.

:mod:`~meterproxy.budgets.rules` reads ``[budgets]`` into rules and windows;
:mod:`~meterproxy.budgets.estimate` reads a request's model and output cap from its JSON head;
:mod:`~meterproxy.budgets.book` keeps the spend, reservations and alert levels (checked on the
event loop, settled by a ledger writer step, seeded from the ledger at start);
:mod:`~meterproxy.budgets.refusal` is the 429 a blocked call gets, in its provider's own shape;
:mod:`~meterproxy.budgets.status` is what ``meterproxy budget`` and ``GET /api/budgets`` show.
"""
