"""The redactor: every kind of finding, checksums, config patterns and allow-list, pieces,
logs, and properties (idempotent, never raises, keeps what is not a secret)."""

from __future__ import annotations

import io
import logging
import random
import string
import sysconfig
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterproxy.redact.call import CallRedaction, TextCache
from meterproxy.redact.engine import Redactor
from meterproxy.redact.logs import RedactingFilter, redact_logs
from tests.secret_corpus import CORPUS, OPENAI_KEY, Planted, planted_text

REDACTOR = Redactor()
FALSE_POSITIVES = Path(__file__).parent / "fixtures" / "false_positives"


def redact(text: str) -> str:
    return REDACTOR.redact(text)[0]


@pytest.mark.parametrize("item", CORPUS, ids=lambda i: f"{i.kind}:{i.text[:24]}")
def test_each_planted_item_becomes_its_placeholder(item: Planted) -> None:
    text = f"Here you go: {item.text} - thanks"
    redacted, count = REDACTOR.redact(text)
    assert count == 1
    assert redacted.startswith("Here you go: ") and redacted.endswith(" - thanks")
    # Nothing of the secret part is left: only text around it, and the placeholder.
    inner = redacted.removeprefix("Here you go: ").removesuffix(" - thanks")
    kept_before, placeholder, kept_after = inner.partition(item.kind)
    before, _, after = item.text.partition(item.core)
    assert placeholder and before.startswith(kept_before) and after.endswith(kept_after), redacted


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("key sk-proj-abcDEF1234567890abcdefGHIJ ok", "key [REDACTED:openai_key] ok"),
        ("mail zed@example.com, or call (415) 555-0134.", "mail [EMAIL], or call [PHONE]."),
        ("DB_PASSWORD=hunter22 DEBUG=1", "DB_PASSWORD=[REDACTED:password] DEBUG=1"),
        ("DB_PASSWORD=Tr0ub4dor&3 or https://x.io/?password=s3cr3t&user=bob",
         "DB_PASSWORD=[REDACTED:password] or https://x.io/?password=[REDACTED:password]&user=bob"),
        ('{"password": "hunter2"}', '{"password": "[REDACTED:password]"}'),
        ("postgres://app:s3cr3t@db.internal:5432/x", "postgres://app:[REDACTED:password]@db.internal:5432/x"),
        ("open /home/zorb/src/app.py", "open [PATH:~]/src/app.py"),
        ("open C:\\Users\\Zorb\\src\\app.py", "open [PATH:~]\\src\\app.py"),
        ("the VPC is 10.0.12.7 and the metadata server 169.254.169.254",
         "the VPC is [IP:private] and the metadata server [IP:link-local]"),
        ("a deal worth $1,250,000.00 or $3.5M", "a deal worth [AMOUNT] or [AMOUNT]"),
        ("card 4111 1111 1111 1111 exp 12/29", "card [CARD] exp 12/29"),
        ("card 4111111111111111 2029", "card [CARD] 2029"),
        ("IBAN GB82 WEST 1234 5698 7654 32 ABCD", "IBAN [IBAN] ABCD"),
        ("Authorization: Bearer abcdef0123456789abcdef", "Authorization: Bearer [REDACTED:bearer_token]"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n(cut)", "[REDACTED:private_key](cut)"),
    ],
)
def test_findings_in_context(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112",  # fails Luhn
        "order 1234 5678 9012 3452",  # Luhn-valid, but no card network starts with 1
        "timestamp 1700000000000 ms",
        "IBAN GB83 WEST 1234 5698 7654 32",  # wrong check digits
        "uuid 123e4567-e89b-12d3-a456-426614174000",
        "commit 9fceb02d0ae598e95dc970b74767f19372d61af8",
        "scikit-learn is imported as sk-learn-developers-guide",
        "max_tokens=1000, temperature=0.2",
        "token = get_token()",
        "password = os.environ['DB_PASSWORD']",
        "def login(user: str, password: str) -> None:",
        "the password is incorrect, try again",
        "passwd = passwd + suffix",
        "git clone git@github.com:acme/app.git",
        "echo $1 $2 and s/(a)/$1/",
        "see https://example.com/home/about and /root/.bashrc",
        "released 2024-01-15, version 10.2.3, build 172.16",
        "public DNS 8.8.8.8 and localhost 127.0.0.1",
        "@dataclass(frozen=True) and user@localhost",
        "Decimal('+35236450.6') and RFC 4122, $4.1.6",
        "bearer tokens expire after an hour",
        "color #ff8800; width: 100%; z-index: 1000",
        'authorization = self.headers.get("authorization")',
        "aligned in the form '+000000120'",
    ],
)
def test_ordinary_text_is_kept(text: str) -> None:
    assert REDACTOR.redact(text) == (text, 0)


def test_a_secret_split_across_pieces_is_found() -> None:
    pieces = ["my key is sk-pr", "oj-abcDEF12345", "67890abcdefGHIJ, mail ze", "d@example.com"]
    redacted, count = REDACTOR.redact_pieces(pieces)
    assert redacted == ["my key is [REDACTED:openai_key]", "", ", mail [EMAIL]", ""]
    assert count == 2


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=4000), max_size=40))
def test_pieces_redact_like_the_joined_text(cuts: list[int]) -> None:
    text = planted_text()
    bounds = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    redacted, count = REDACTOR.redact_pieces(pieces)
    assert len(redacted) == len(pieces)
    assert ("".join(redacted), count) == REDACTOR.redact(text)


def test_the_requests_own_credentials_are_removed_even_when_unrecognizable() -> None:
    odd_key = "zz-custom-gateway-key-000111222"
    assert REDACTOR.redact(f"bad key {odd_key}!", secrets=[odd_key]) == ("bad key [REDACTED:credential]!", 1)
    assert REDACTOR.redact(f"bad key {OPENAI_KEY}", secrets=[OPENAI_KEY]) == ("bad key [REDACTED:openai_key]", 1)


# --- properties ------------------------------------------------------------------------------

FRAGMENTS = [item.text for item in CORPUS] + [
    " ", "\n", "=", ":", '"', "'", "@", "$", "/", "\\", ".", "-", "_", "[", "]", "password", "token", "key",
    "Bearer ", "://", "user:", "10.", "192.168.", "+1 ", "4111", "GB82", "/home/", "C:\\Users\\", "sk-",
    "[EMAIL]", "[REDACTED:secret]", "[PATH:~]", "AIza", "eyJ", "-----BEGIN PRIVATE KEY-----", "é", "İ", "\x00",
]
messy_text = st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(string.printable, max_size=12)), max_size=30).map("".join),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messy_text)
def test_redaction_never_raises_and_is_idempotent(text: str) -> None:
    once, _ = REDACTOR.redact(text)
    assert isinstance(once, str)
    assert REDACTOR.redact(once) == (once, 0)


NO_PREFILTER = Redactor({"never": "(?!)x"})  # with an extra pattern every rule runs on every text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messy_text)
def test_the_prefilter_never_hides_a_finding(text: str) -> None:
    assert REDACTOR.redact(text) == NO_PREFILTER.redact(text)


ORDINARY_WORDS = (
    "the agent reads a file and writes a summary of the changes for review tomorrow morning please "
    "def return self value for in range import from class async await yield lambda None True False "
    "function const let var if else while try except finally raise with as pass continue break"
).split()
ordinary = st.one_of(
    st.sampled_from(ORDINARY_WORDS),
    st.uuids().map(str),
    st.binary(min_size=20, max_size=20).map(bytes.hex),  # git SHAs
    st.integers(min_value=0, max_value=999).map(str),
    st.sampled_from(["(", ")", ",", ".", ";", ":", "{", "}", "==", "+", "*", "->", "#"]),
)
ordinary_text = st.lists(ordinary, max_size=40).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(ordinary_text)
def test_text_without_secrets_is_unchanged(text: str) -> None:
    assert REDACTOR.redact(text) == (text, 0)


@settings(max_examples=200, deadline=None)
@given(ordinary_text, st.sampled_from(CORPUS), ordinary_text)
def test_only_the_secret_is_replaced(before: str, item: Planted, after: str) -> None:
    # " | " ends the item: a card or phone number followed by " 0 100" is ambiguous.
    redacted, count = REDACTOR.redact(f"{before} | {item.text} | {after}")
    assert count == 1
    assert redacted.startswith(before + " | ") and redacted.endswith(" | " + after)
    assert item.core not in redacted and item.kind in redacted


# --- false positives ---------------------------------------------------------------------------


def changed_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if REDACTOR.redact(line)[1]]


def test_false_positive_rate_on_code_prose_uuids_and_shas() -> None:
    rng = random.Random(7)
    uuids = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(2000)]
    shas = ["%040x" % rng.getrandbits(160) for _ in range(2000)]
    assert changed_lines(uuids) == [] and changed_lines(shas) == []

    prose_and_code = [line for path in sorted(FALSE_POSITIVES.glob("*.txt")) for line in path.read_text().splitlines()]
    assert len(prose_and_code) > 300
    assert changed_lines(prose_and_code) == []

    # A large body of real code: the standard library modules every Python 3.13 ships.
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = [line for name in ("argparse", "textwrap", "json/decoder", "subprocess", "pathlib/_local", "ast",
                              "typing", "dataclasses", "asyncio/base_events", "http/client", "logging/__init__")
            for line in (stdlib / f"{name}.py").read_text().splitlines()]
    changed = changed_lines(code)
    rate = len(changed) / len(code)
    print(f"\nfalse positives: {len(changed)} of {len(code)} stdlib lines ({rate:.3%})")
    assert rate < 0.001, changed


# --- configuration ---------------------------------------------------------------------------


def test_extra_patterns_and_allow_list() -> None:
    redactor = Redactor(
        {"employee_id": r"EMP-\d{6}", "ticket": r"ticket (?P<s>[A-Z]{3}-\d+)"},
        allow=[r"support@acme\.com", r"10\.0\.0\.1"],
    )
    text = "EMP-123456 filed ticket OPS-42; mail support@acme.com or zed@acme.com; host 10.0.0.1 or 10.0.0.2"
    assert redactor.redact(text) == (
        "[REDACTED:employee_id] filed ticket [REDACTED:ticket]; mail support@acme.com or [EMAIL]; "
        "host 10.0.0.1 or [IP:private]",
        4,
    )


@pytest.mark.parametrize(
    ("patterns", "allow", "words"),
    [
        ({"employee_id": "EMP-(\\d"}, [], ["patterns.employee_id", "bad regular expression", "EMP-(\\\\d"]),
        ({"anything": "x*"}, [], ["patterns.anything", "matches empty text"]),
        ({"bad name!": "x"}, [], ["'bad name!'", "not a valid name"]),
        ({}, ["[unclosed"], ["allow", "[unclosed"]),
    ],
)
def test_bad_patterns_are_clear_errors(patterns: dict, allow: list, words: list[str]) -> None:
    with pytest.raises(ValueError) as raised:
        Redactor(patterns, allow)
    for word in words:
        assert word in str(raised.value)


# --- JSON and logs ---------------------------------------------------------------------------


def test_json_values_under_secret_names_and_card_numbers() -> None:
    call = CallRedaction(REDACTOR, secrets=["gateway-key-0123456789"])
    data = {
        "user": {"email": "zed@example.com", "password": "hunter2", "api_key": "k3yV4lue0123456789", "n": 3},
        "card": 4111111111111111,
        "when": 1700000000000,
        "zed@example.com": ["gateway-key-0123456789", True, None, 1.5],
    }
    assert call.json(data) == {
        "user": {"email": "[EMAIL]", "password": "[REDACTED:password]", "api_key": "[REDACTED:secret]", "n": 3},
        "card": "[CARD]",
        "when": 1700000000000,
        "[EMAIL]": ["[REDACTED:credential]", True, None, 1.5],
    }
    assert call.count == 6


def test_log_records_are_redacted_with_their_tracebacks() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("test-redact-logs")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    redact_logs(REDACTOR, logger)
    redact_logs(REDACTOR, logger)  # a second configure replaces the filter, never stacks it
    assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
    try:
        logger.warning("call to %s failed for %s", "/v1/u/zed@example.com", OPENAI_KEY)
        try:
            raise RuntimeError(f"upstream said: bad key {OPENAI_KEY}")
        except RuntimeError:
            logger.exception("could not meter call")
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert "call to /v1/u/[EMAIL] failed for [REDACTED:openai_key]" in output
    assert "RuntimeError: upstream said: bad key [REDACTED:openai_key]" in output
    assert "zed@example.com" not in output and OPENAI_KEY not in output


def test_short_strings_resent_by_every_call_come_from_the_cache() -> None:
    cache = TextCache()
    user_agent = "agent/1.0 (zed@example.com)"
    assert CallRedaction(REDACTOR, cache=cache).text(user_agent) == "agent/1.0 ([EMAIL])"
    assert cache.get((user_agent, ())) == ("agent/1.0 ([EMAIL])", 1)
    later = CallRedaction(REDACTOR, cache=cache)
    assert later.text(user_agent) == "agent/1.0 ([EMAIL])" and later.count == 1


def test_long_strings_are_redacted_once_across_calls() -> None:
    cache = TextCache(max_chars=3000)
    history = "earlier message from zed@example.com " * 20  # 740 characters
    first = CallRedaction(REDACTOR, cache=cache)
    assert first.text(history).count("[EMAIL]") == 20 and first.count == 20
    second = CallRedaction(REDACTOR, cache=cache)
    assert second.text(history) == first.text(history) and second.count == 20  # counted per call
    assert cache.get((history, ())) is not None
    other_key = CallRedaction(REDACTOR, secrets=["zed@example.com"], cache=cache)  # not the cached result
    assert other_key.text(history).count("[REDACTED:credential]") == 20
    for n in range(5):  # newer strings push the oldest out
        CallRedaction(REDACTOR, cache=cache).text(f"{n} " + "x" * 600)
    assert cache.get((history, ())) is None
