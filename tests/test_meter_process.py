"""The meter process: metering runs beside the proxy, survives its own death, and outlives a killed proxy
only long enough to write what it was given."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from meterproxy.app import recording
from meterproxy.app.meterproc import read_frame, write_frame
from meterproxy.app.recording import HOLD_MAX, QUIET, Held
from meterproxy.wire.exchange import Exchange
from tests.proxy_process import ProxyProcess
from tests.test_durability import assert_each_once, ledger_tasks, send_calls, wait_for


def meter_pid(home: Path) -> int:
    return json.loads((home / "proxy.json").read_text())["meter_pid"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_killed_meter_process_is_replaced_and_no_call_is_lost(upstream, start_proxy) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    first = meter_pid(proxy.home)
    assert first != proxy.proc.pid and alive(first)
    finished: dict[str, float] = {}
    tasks = [f"m-{i}" for i in range(300)]
    load = threading.Thread(target=send_calls, args=(upstream, proxy, tasks, 10, finished), daemon=True)
    load.start()
    assert wait_for(lambda: len(finished) >= 60, 60)
    os.kill(first, signal.SIGKILL)  # mid-load: calls are queued, in its pipe, in its memory
    load.join(120)
    assert len(finished) == len(tasks)  # the agents never noticed
    assert wait_for(lambda: len(ledger_tasks(proxy.ledger)) >= len(tasks), 30), len(ledger_tasks(proxy.ledger))
    assert_each_once(proxy.home, tasks)  # in the ledger and the JSONL mirror, once each
    assert wait_for(lambda: meter_pid(proxy.home) != first, 5)
    assert alive(meter_pid(proxy.home))
    assert "the meter process exited" in proxy.output()
    assert proxy.stop() == 0
    assert "Traceback" not in proxy.output()


def test_a_killed_proxy_leaves_its_meter_process_to_write_and_exit(upstream, start_proxy) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    child = meter_pid(proxy.home)
    tasks = [f"k-{i}" for i in range(40)]
    send_calls(upstream, proxy, tasks, workers=4, stream=False)
    time.sleep(0.2)  # the hand-off gathers for 20 ms: every finished call has crossed
    proxy.proc.send_signal(signal.SIGKILL)
    proxy.proc.wait(10)
    assert wait_for(lambda: not alive(child), 30)  # its pipe closed: it wrote what it had and exited
    assert sorted(ledger_tasks(proxy.ledger)) == sorted(tasks)


def test_the_meter_process_is_stopped_with_the_proxy_after_writing_everything(upstream, start_proxy) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    child = meter_pid(proxy.home)
    tasks = [f"s-{i}" for i in range(30)]
    send_calls(upstream, proxy, tasks, workers=6)
    assert proxy.stop(signal.SIGTERM) == 0
    assert not alive(child)
    assert sorted(ledger_tasks(proxy.ledger)) == sorted(tasks)
    assert f"{len(tasks)} records written" in proxy.output()


def test_a_ctrl_c_to_the_whole_process_group_stops_the_proxy_cleanly(home, tmp_path, upstream, upstream_ca) -> None:
    """A terminal's Ctrl-C reaches every process of the foreground group: the meter process is in
    its own session, so the proxy alone decides when it stops (after writing everything)."""
    ca_file = tmp_path / "upstream-ca.pem"
    upstream_ca.cert_pem.write_to_path(str(ca_file))
    proxy = ProxyProcess(home, [f"localhost:{upstream.port}=openai"], ca_file, new_session=True).wait_ready()
    child = meter_pid(proxy.home)
    send_calls(upstream, proxy, ["c-1", "c-2"], workers=2)
    os.killpg(os.getpgid(proxy.proc.pid), signal.SIGINT)
    assert proxy.proc.wait(30) == 0
    assert not alive(child)
    assert sorted(ledger_tasks(proxy.ledger)) == ["c-1", "c-2"]
    assert "Traceback" not in proxy.output()


def test_a_client_is_answered_while_the_meter_process_is_stopped(upstream, start_proxy) -> None:
    """Metering never holds the traffic: with the meter process frozen, calls still go through,
    and are recorded once it runs again."""
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    child = meter_pid(proxy.home)
    os.kill(child, signal.SIGSTOP)
    try:
        send_calls(upstream, proxy, [f"f-{i}" for i in range(20)], workers=5, stream=False)
    except (openai.APIError, httpx.HTTPError) as e:  # pragma: no cover - the failure this test is about
        raise AssertionError(f"a frozen meter process broke the traffic: {e}") from e
    finally:
        os.kill(child, signal.SIGCONT)
    assert wait_for(lambda: len(ledger_tasks(proxy.ledger)) == 20, 30)


class FakeWriter:
    def __init__(self) -> None:
        self.submitted: list[str] = []

    def submit(self, exchange) -> None:
        self.submitted.append(exchange.id)


def frame_of(*ids: str) -> bytes:
    exchanges = [Exchange(id=i, provider="openai", scheme="https", host="api.openai.com", port=443, method="POST",
                          path="/v1/chat/completions", query={}, request_headers={}, request_body=b"{}", started_at=0.0)
                 for i in ids]
    out = io.BytesIO()
    write_frame(out, exchanges)
    payload = read_frame(io.BytesIO(out.getvalue()))
    assert payload is not None
    return payload


def test_held_calls_wait_for_a_pause_at_most_hold_max_seconds() -> None:
    now = [100.0]
    writer = FakeWriter()
    held = Held(writer, clock=lambda: now[0])  # type: ignore[arg-type]
    assert held.wait() is None and not held.due()
    held.add(frame_of("a", "b"))
    assert not held.due() and held.wait() == pytest.approx(QUIET)
    now[0] += QUIET  # a pause: metered at once
    assert held.due()
    held.submit()
    assert writer.submitted == ["a", "b"] and held.wait() is None
    # Calls keep coming, each before the pause: held, but never longer than HOLD_MAX.
    for i in range(int(HOLD_MAX / (QUIET / 2)) + 5):
        held.add(frame_of(f"c{i}"))
        if held.due():
            break
        now[0] += QUIET / 2
    assert held.due() and now[0] - 100.0 - QUIET <= HOLD_MAX + QUIET
    held.submit()
    assert len(writer.submitted) > 2 + HOLD_MAX / QUIET


def test_held_frames_past_the_size_bound_are_metered_at_once(monkeypatch) -> None:
    monkeypatch.setattr(recording, "HOLD_BYTES", 1000)
    held = Held(FakeWriter(), clock=lambda: 0.0)  # type: ignore[arg-type]
    held.add(frame_of("a"))
    assert not held.due()
    while held.size < 1000:
        held.add(frame_of("b"))
    assert held.due()


def test_a_terminated_meter_process_writes_what_it_holds_and_is_replaced(upstream, start_proxy) -> None:
    proxy = start_proxy(f"localhost:{upstream.port}=openai")
    first = meter_pid(proxy.home)
    tasks = [f"t-{i}" for i in range(20)]
    send_calls(upstream, proxy, tasks, workers=4, stream=False)
    os.kill(first, signal.SIGTERM)
    assert wait_for(lambda: not alive(first), 30)
    assert "Traceback" not in proxy.output()
    send_calls(upstream, proxy, ["after"], workers=1, stream=False)  # the proxy started a new one
    assert wait_for(lambda: len(ledger_tasks(proxy.ledger)) == len(tasks) + 1, 30)
    assert sorted(ledger_tasks(proxy.ledger)) == sorted([*tasks, "after"])  # each once
    assert wait_for(lambda: meter_pid(proxy.home) != first, 5)  # proxy.json is rewritten every second
    assert proxy.stop() == 0 and "Traceback" not in proxy.output()
