"""The built-in rules, most specific first, and the checks that confirm their matches in code.

Credentials (:data:`SECRET_RULES`, :data:`ASSIGNMENT_RULE` for ``KEY=value`` secrets,
:data:`AWS_SECRET_RULE` for bare AWS secret keys) and personal data (:data:`PII_RULES`).
Literal prefixes and triggers keep a rule cheap on text it cannot match; its check then applies
word boundaries, entropy and checksums such as Luhn and IBAN mod-97. :data:`_MAYBE_FINDING` is
what every one of them needs to find anything: the redactor skips text without it.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter

from meterproxy.redact.rule import PLACEHOLDER, Rule, Span, _after, _before, _glued, _rule

# --- checks ---------------------------------------------------------------------------------


def _bounded(match: re.Match[str], text: str) -> Span | None:
    return None if _glued(text, *match.span()) else match.span()


def _entropy(value: str) -> float:
    """Shannon entropy in bits per character."""
    size = len(value)
    return -sum(n / size * math.log2(n / size) for n in Counter(value).values())


def looks_random(value: str) -> bool:
    """A credential-like string: long, letters and digits mixed, high entropy."""
    if len(value) < 12 or PLACEHOLDER.search(value):
        return False
    has_digit = any(c.isdigit() for c in value)
    has_alpha = any(c.isalpha() for c in value)
    if has_digit and has_alpha:
        return _entropy(value) >= 3.0
    return len(value) >= 24 and has_alpha and not value.isalpha() and _entropy(value) >= 3.8


def _vendor_key(match: re.Match[str], text: str) -> Span | None:
    """A prefixed key: not glued to other text, and digits and letters after its prefix."""
    body = match.group("body")
    if _glued(text, *match.span()) or not any(c.isdigit() for c in body) or not any(c.isalpha() for c in body):
        return None
    return match.span()


_KEY_CONTEXT = re.compile(
    r"(?i)(?<![a-z0-9])(?:azure|openai|mistral|together|fireworks|deepseek|groq|xai|grok|cohere|gemini|perplexity"
    r"|openrouter|api|key|subscription|secret|token|credential|auth)s?(?![a-z0-9])"
    r"[^\w\n|;,.]{0,3}(?:\w{1,12}[^\w\n|;,.]{1,3}){0,3}\Z"
)
"""A key's name or its provider's, then at most three short words of the same clause (``the Azure OpenAI key is ``)."""


def _key_in_context(match: re.Match[str], text: str) -> Span | None:
    """A bare key (Azure's 32 hex, Mistral's 32, Together's 64 hex...): random, whole, and named as a
    key or a provider shortly before it on the same line."""
    start, end = match.span()
    value = match.group()
    if _glued(text, start, end, "_+/=-") or not looks_random(value):
        return None
    if not (any(c.isdigit() for c in value) and any(c.isalpha() for c in value)):
        return None
    if _NAMED_VALUE.search(text, max(0, start - 80), start):
        return None  # ``API_KEY=...``: the assignment rule names it
    return match.span() if _KEY_CONTEXT.search(text, max(0, start - 80), start) else None



def _aws_secret(match: re.Match[str], text: str) -> Span | None:
    value = match.group()
    if len(value) != 40 or not _AWS_SECRET_CHARS.fullmatch(value):
        return None
    if not (any(c.isupper() for c in value) and any(c.islower() for c in value) and any(c.isdigit() for c in value)):
        return None
    return match.span() if _entropy(value) >= 4.2 else None


_AWS_SECRET_CHARS = re.compile(r"[A-Za-z0-9/+]+")


def _after_word(match: re.Match[str], text: str) -> Span | None:
    """``bearer``/``token`` as a word, then a token with letters and digits."""
    if _before(text, match.start()).isalpha():
        return None
    value = match.group("s")
    if not (any(c.isdigit() for c in value) and any(c.isalpha() for c in value)):
        return None
    return match.span("s")


def _header_value(match: re.Match[str], text: str) -> Span | None:
    before = _before(text, match.start())
    if before.isalnum() or before == "_":
        return None
    value = text[match.start("s"):match.end("s")]
    if _REFERENCE.match(value) or PLACEHOLDER.search(value):
        return None
    if _CALL.match(value):
        return None  # code: authorization = self.headers.get(...)
    return match.span("s")


_CALL = re.compile(r"[A-Za-z_][\w.]*[(\[]")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = ord(ch) - 48
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


_CARD_PREFIX = re.compile(r"4|5[1-5]|2(?:2[2-9]|[3-6]\d|7[01]|720)|3[47]|3(?:0[0-5]|[68])|6(?:011|5|4[4-9])|35")


def _card(match: re.Match[str], text: str) -> Span | None:
    """13 to 19 digits (grouped as on a card), a card network's prefix, Luhn-valid.

    Tries the longest run first, then shorter ones: a card followed by an expiry date or a
    CVC in the same run of digits is still found.
    """
    start = match.start()
    before = _before(text, start)
    if before.isalnum() or before in ".,-_":
        return None
    raw = match.group()
    if not _CARD_PREFIX.match(raw):
        return None
    ends = [i + 1 for i, c in enumerate(raw) if c.isdigit()]
    for digit_count in range(min(len(ends), 19), 12, -1):
        end = ends[digit_count - 1]
        after = _after(text, start + end)
        if after.isalnum() or after in "_":
            continue
        if after in " -" and start + end + 1 < len(text) and text[start + end + 1] in ".,":
            continue
        if _card_groups(raw[:end]) and _luhn(raw[:end].replace(" ", "").replace("-", "")):
            return start, start + end
    return None


def _card_groups(raw: str) -> bool:
    """Digits as cards print them: in one run, in fours, or 4-6-5 / 4-6-4 (Amex, Diners)."""
    if " " in raw and "-" in raw:
        return False
    groups = [len(g) for g in re.split(r"[ -]", raw)]
    if len(groups) == 1:
        return True
    return groups in ([4, 6, 5], [4, 6, 4]) or (all(g == 4 for g in groups[:-1]) and 1 <= groups[-1] <= 4)


def _iban(match: re.Match[str], text: str) -> Span | None:
    """Two letters, two check digits, mod-97 valid: the longest such prefix of the match."""
    start = match.start()
    if _before(text, start).isalnum():
        return None
    raw = match.group()
    ends = [i + 1 for i, c in enumerate(raw) if c != " " and (i + 1 == len(raw) or raw[i + 1] == " ")]
    if not raw.count(" "):
        ends = [len(raw)]
    for end in reversed(ends):
        compact = raw[:end].replace(" ", "")
        if not 15 <= len(compact) <= 34 or _after(text, start + end).isalnum():
            continue
        moved = compact[4:] + compact[:4]
        if int("".join(str(int(c, 36)) for c in moved)) % 97 == 1:
            return start, start + end
    return None


_USERINFO_BEFORE = re.compile(r"://[^\s/@]*:\Z")


_LOCAL_PART = frozenset(string.ascii_letters + string.digits + "_.%+-")


def _email(match: re.Match[str], text: str) -> Span | None:
    """Extend an ``@domain.tld`` match back over its local part.

    Not ``git@host`` (SSH remotes) nor the password part of ``scheme://user:pass@host``.
    """
    at, end = match.span()
    start = at
    while start > 0 and at - start < 64 and text[start - 1] in _LOCAL_PART:
        start -= 1
    while start < at and not text[start].isalnum():
        start += 1
    after = _after(text, end)
    if start == at or after.isalnum() or after in "_-" or _before(text, start).isalnum():
        return None
    if text[start:at].lower() == "git" or _USERINFO_BEFORE.search(text, max(0, start - 120), start):
        return None
    return start, end


def _decimal_follows(text: str, end: int) -> bool:
    return text[end:end + 1] == "." and text[end + 1:end + 2].isdigit()


def _phone(match: re.Match[str], text: str) -> Span | None:
    """``+`` and 8 to 15 digits, or a North American ``(415) 555-0134`` / ``415-555-0134``.

    An international number followed by more digit groups is cut back to the longest
    prefix that is a possible number.
    """
    start = match.start()
    before = _before(text, start)
    if before.isalnum() or before in "+_./-":
        return None
    found = match.group()
    if found.count(".") == 1 and not any(c in found for c in " -()"):
        return None  # +35236450.6: a signed decimal
    if found.startswith("+0"):
        return None  # no country code starts with 0
    if not found.startswith("+"):
        end = match.end()
        ok = sum(c.isdigit() for c in found) == 10 and not _decimal_follows(text, end)
        return match.span() if ok and not _after(text, end).isalnum() else None
    ends = [i + 1 for i, c in enumerate(found) if c.isdigit() and (i + 1 == len(found) or not found[i + 1].isdigit())]
    for length in reversed(ends):
        end = start + length
        after = _after(text, end)
        if 8 <= sum(c.isdigit() for c in found[:length]) <= 15 and not (
            after.isalnum() or after in "_-" or _decimal_follows(text, end)
        ):
            return start, end
    return None


def _ipv4(match: re.Match[str], text: str) -> Span | None:
    start, end = match.span()
    # A full stop ending the sentence is no part of the address ("... on 10.42.17.233."); a dot
    # followed by more of a token is (a version, a longer dotted name).
    sentence_end = text[end:end + 1] == "." and not (_after(text, end + 1).isalnum() or _after(text, end + 1) in "._-")
    glued = _glued(text, start, end, "_-" if sentence_end else "._-")
    if glued or any(int(part) > 255 for part in match.group().split(".")):
        return None
    return match.span()


def _ipv6(match: re.Match[str], text: str) -> Span | None:
    start, end = match.span()
    before, after = _before(text, start), _after(text, end)
    if before.isalnum() or before in "_:" or after.isalnum() or after in "_:":
        return None
    return match.span()


_NOT_USERS = {"shared", "public", "default", "default user", "all users", "guest"}
_WSL_MOUNT = re.compile(r"/mnt/[a-z]\Z")


def _user_path(match: re.Match[str], text: str) -> Span | None:
    """``/home/name``, ``/Users/name``, ``C:\\Users\\name``: not inside a URL path."""
    start = match.start()
    if match.group("name").lower() in _NOT_USERS:
        return None
    before = _before(text, start)
    if (before.isalnum() or before in "._-") and not _WSL_MOUNT.search(text, max(0, start - 6), start):
        return None
    return match.span()


def _amount(match: re.Match[str], text: str) -> Span | None:
    """``$1`` alone is a shell or regex reference, not money; ``$1.50`` or ``$12`` is money."""
    start, end = match.span()
    before, after = _before(text, start), _after(text, end)
    if before.isalnum() or before in "_$\\" or (after.isalpha() or after == "_") and not match.group("unit"):
        return None
    if _decimal_follows(text, end):
        return None  # $4.1.6: a section number
    number = match.group("n")
    return match.span() if len(number.replace(",", "")) >= 2 or "." in number else None


# --- secrets in KEY=value form --------------------------------------------------------------

_PASSWORD_NAMES = r"passw(?:or)?d|passphrase|pwd|secret"
_SECRET_NAMES = (
    r"token|api[_-]?key|apikey|access[_-]?key|secret[_-]?key|private[_-]?key|auth[_-]?key"
    r"|credentials?|session[_-]?(?:id|key)|signature"
)
_SECRET_NAME_AT_END = re.compile(rf"(?i)(?:{_PASSWORD_NAMES}|{_SECRET_NAMES})\Z")
_PASSWORD_NAME_AT_END = re.compile(rf"(?i)(?:{_PASSWORD_NAMES})\Z")
_ASSIGNMENT = re.compile(
    rf"(?P<name>{_PASSWORD_NAMES}|{_SECRET_NAMES})(?![a-z0-9])(?:\\?[\"'])?[ \t]*"
    r"(?P<sep>:=|=>|==|[:=]|[ \t]+is[ \t]+)(?P<space>[ \t]*)"
    r"(?:\\?\"(?P<dq>[^\"\n\\]{1,500})\\?\"|\\?'(?P<sq>[^'\n\\]{1,500})\\?'|`(?P<bq>[^`\n]{1,500})`"
    r"|(?P<bare>[^\s\"'`,;<>(){}\[\]\\]{1,500}))"
)
_VALUE_GROUPS = ("dq", "sq", "bq", "bare")
_NAMED_VALUE = re.compile(rf"(?i)(?:{_PASSWORD_NAMES}|{_SECRET_NAMES})[\"']?[ \t]*(?::=|=>|[:=])[ \t]*[\"'`]?\Z")
"""The end of ``api_key = "``: what follows is the assignment rule's to judge."""
_REFERENCE = re.compile(r"[$%<]|\{\{|[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+\Z|process\.env|os\.environ")
_NOT_SECRETS = {
    "none", "null", "nil", "true", "false", "undefined", "str", "string", "bytes", "int", "optional",
    "required", "secret", "password", "token", "redacted", "***", "...", "xxx", "<redacted>", "hidden",
}


def secret_value(name: str, value: str, quoted: bool = True, loose: bool = False) -> str | None:
    """The placeholder for ``value`` stored under the name ``name``, or None when it is no secret.

    A password-like name (``password``, ``DB_PASS``... ``secret``) makes any value a secret; other
    secret-like names (``token``, ``api_key``...) only values that look random. ``loose``: the
    value came after ``:`` or ``is``, where a plain word is more likely prose than a password.
    """
    if not _SECRET_NAME_AT_END.search(name):
        return None
    value = value.strip()
    if len(value) < 3 or value.lower() in _NOT_SECRETS or PLACEHOLDER.search(value):
        return None
    if not quoted and _REFERENCE.match(value):
        return None
    if _PASSWORD_NAME_AT_END.search(name):
        return None if loose and not quoted and value.isalpha() else "[REDACTED:password]"
    return "[REDACTED:secret]" if looks_random(value) else None


_OPERATORS = frozenset("=+-*/%|&<>,:;?")
_VARIABLE_WORDS = ("pass", "pwd", "secret", "token", "key", "cred", "auth")


def _assignment(match: re.Match[str], text: str) -> Span | None:
    if match.start() > 0 and text[match.start() - 1] == "$":
        return None  # a variable: $PWD, $SECRET
    group = next(g for g in _VALUE_GROUPS if match.start(g) >= 0)
    start, end = match.span(group)
    value = text[start:end]
    if group == "bare":
        if _before(text, match.start()) in "?&":  # a URL query: ?password=x&next=param
            value = value.partition("&")[0]
        value = value.rstrip(".:!?")  # punctuation ending a sentence or a Python line
        end = start + len(value)
        if text[end:end + 1] == "(":
            return None  # a call: password = getpass()
        after = text[end:end + 40].lstrip(" \t")[:1]
        if value.isidentifier() and (
            any(word in value.lower() for word in _VARIABLE_WORDS)
            or (after in _OPERATORS and after and match.group("space") and not looks_random(value))
        ):
            return None  # code: password = passwd + suffix, user, password = a, b
    loose = match.group("sep").strip() in (":", "is")
    return (start, end) if secret_value(match.group("name"), value, group != "bare", loose) else None


def _assignment_label(match: re.Match[str]) -> str:
    return "[REDACTED:password]" if _PASSWORD_NAME_AT_END.search(match.group("name")) else "[REDACTED:secret]"


# --- the built-in rules, most specific first ------------------------------------------------

_QUOTE = r"(?:\\?[\"'`])?"

_COOKIE_PAIR = r"[^\s=;\"'`\\]+=[^\s;\"'`\\]*"

SECRET_RULES: tuple[Rule, ...] = (
    _rule(
        "private_key",
        r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----(?:[\s\S]{0,20000}?-----END[A-Z0-9 ]{0,40}"
        r"PRIVATE KEY(?: BLOCK)?-----|(?:[A-Za-z0-9+/=\s:,-]|\\[nr])*)",
        triggers=("PRIVATE KEY",),
    ),
    _rule("openrouter_key", r"sk-or-v1-(?P<body>[a-f0-9]{64})", check=_vendor_key, triggers=("sk-or-",)),
    _rule("anthropic_key", r"sk-ant-(?P<body>[A-Za-z0-9_-]{20,400})", check=_vendor_key, triggers=("sk-ant-",)),
    _rule("openai_key", r"sk-(?:proj-|svcacct-|admin-)?(?P<body>[A-Za-z0-9_-]{20,400})", check=_vendor_key,
          triggers=("sk-",)),
    _rule("google_key", r"AIza[0-9A-Za-z_-]{35}", check=_bounded, triggers=("AIza",)),
    _rule("github_token", r"(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})", check=_bounded),
    _rule("gitlab_token", r"gl(?:pat|dt|rt|ptt|soat|ft|cbt|imt|oas)-(?P<body>[A-Za-z0-9_-]{20,255})",
          check=_vendor_key),
    _rule("slack_token", r"xox[abposre]-(?P<body>[A-Za-z0-9-]{10,255})", check=_vendor_key, triggers=("xox",)),
    _rule("slack_webhook", r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9/_-]+",
          triggers=("hooks.slack.com",)),
    _rule("stripe_key", r"(?:(?:sk|rk|pk)_(?:live|test)|whsec)_(?P<body>[A-Za-z0-9]{10,255})", check=_vendor_key,
          triggers=("_live_", "_test_", "whsec_")),
    _rule("groq_key", r"gsk_(?P<body>[A-Za-z0-9]{40,64})", check=_vendor_key, triggers=("gsk_",)),
    _rule("xai_key", r"xai-(?P<body>[A-Za-z0-9]{40,120})", check=_vendor_key, triggers=("xai-",)),
    _rule("together_key", r"tgp_v1_(?P<body>[A-Za-z0-9_-]{30,80})", check=_vendor_key, triggers=("tgp_v1_",)),
    _rule("fireworks_key", r"fw_(?P<body>[A-Za-z0-9]{20,60})", check=_vendor_key, triggers=("fw_",)),
    _rule("perplexity_key", r"pplx-(?P<body>[A-Za-z0-9]{40,64})", check=_vendor_key, triggers=("pplx-",)),
    _rule("cerebras_key", r"csk-(?P<body>[a-z0-9]{40,64})", check=_vendor_key, triggers=("csk-",)),
    _rule("nvidia_key", r"nvapi-(?P<body>[A-Za-z0-9_-]{60,80})", check=_vendor_key, triggers=("nvapi-",)),
    _rule("replicate_token", r"r8_(?P<body>[A-Za-z0-9]{30,40})", check=_vendor_key, triggers=("r8_",)),
    _rule("huggingface_token", r"hf_(?P<body>[A-Za-z0-9]{30,255})", check=_vendor_key, triggers=("hf_",)),
    _rule("jwt", r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*", triggers=("eyJ",)),
    _rule("aws_access_key", r"(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA)[A-Z0-9]{16}",
          check=_bounded),
    _rule(
        "aws_secret_key",
        rf"aws[a-z_ .-]{{0,20}}?(?:secret|sk)[a-z_ .-]{{0,20}}{_QUOTE}\s*[:=]\s*{_QUOTE}"
        r"(?P<s>[a-z0-9/+]{40})(?![a-z0-9/+=])",
        triggers=("aws",), lower=True,
    ),
    _rule("bearer_token", r"(?:bearer|token)\s+(?P<s>[a-z0-9._~+/-]{16,}=*)", check=_after_word, lower=True),
    _rule(
        "auth_header",
        rf"(?:authorization|x-api-key|api-key|x-goog-api-key){_QUOTE}\s*[:=]\s*{_QUOTE}"
        r"(?:(?:bearer|basic|digest|token|apikey)\s+)?(?P<s>[^\s\"'`,;\\]{6,})",
        check=_header_value, lower=True,
    ),
    _rule(
        "cookie",
        rf"cookie{_QUOTE}\s*:\s*{_QUOTE}(?P<s>{_COOKIE_PAIR}(?:;[ \t]*{_COOKIE_PAIR})*;?)",
        triggers=("cookie",), lower=True,
    ),
    _rule("password", r"://[^\s:/@\"'<>]{1,100}:(?P<s>[^\s/@\"'<>]{1,200})@", triggers=("://",)),
    _rule("api_key", r"(?<![A-Za-z0-9])[A-Za-z0-9]{32,84}(?![A-Za-z0-9])", check=_key_in_context),
)
"""Credentials. Where spans overlap, the rule listed first names the merged finding."""

ASSIGNMENT_RULE = Rule(
    "secret", _ASSIGNMENT, "[REDACTED:secret]", _assignment, lower=True, label=_assignment_label
)
"""``password=...``, ``"api_key": "..."``, ``my password is ...``: see :func:`secret_value`."""

AWS_SECRET_RULE = Rule(
    "aws_secret_key", re.compile(r"[A-Za-z0-9/+=._-]{40,}"), "[REDACTED:aws_secret_key]", _aws_secret, retry=False
)
"""A bare 40-character AWS secret key: the weakest guess among the secrets, so it ranks last."""

PII_RULES: tuple[Rule, ...] = (
    _rule(
        "email",
        r"@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
        r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}",
        "[EMAIL]", check=_email, triggers=("@",),
    ),
    _rule("iban", r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?", "[IBAN]", check=_iban),
    _rule("card", r"\d(?:[ -]?\d){12,22}", "[CARD]", check=_card),
    _rule("phone", r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,6}(?![\w-])", "[PHONE]", check=_phone, triggers=("+",)),
    _rule("phone", r"(?:\(\d{3}\)[ .-]?|\d{3}[.-])\d{3}[.-]\d{4}(?![\w-])", "[PHONE]", check=_phone),
    _rule("user_path", r"/(?:Users|home)/(?P<name>[^\s/\\\"'<>:|?*]+)", "[PATH:~]", check=_user_path,
          triggers=("/Users/", "/home/")),
    _rule("user_path", r"[A-Za-z]:(?:\\{1,2}|/)Users(?:\\{1,2}|/)(?P<name>[^\s/\\\"'<>:|?*]+)", "[PATH:~]",
          check=_user_path, triggers=("Users",)),
    _rule("private_ip", r"(?:10\.\d{1,3}|172\.(?:1[6-9]|2\d|3[01])|192\.168)\.\d{1,3}\.\d{1,3}", "[IP:private]",
          check=_ipv4),
    _rule("link_local_ip", r"169\.254\.\d{1,3}\.\d{1,3}", "[IP:link-local]", check=_ipv4, triggers=("169.254.",)),
    _rule("link_local_ip", r"[fF][eE]80(?::{1,2}[0-9a-fA-F]{1,4}){1,7}(?:%[\w.-]+)?", "[IP:link-local]",
          check=_ipv6),
    _rule("private_ip", r"[fF][cdCD][0-9a-fA-F]{2}(?::{1,2}[0-9a-fA-F]{1,4}){2,7}", "[IP:private]", check=_ipv6),
    _rule(
        "amount",
        r"\$ ?(?P<n>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)(?P<unit> ?(?:[kKmMbB]|million|billion|thousand)\b)?",
        "[AMOUNT]", check=_amount, triggers=("$",),
    ),
)
"""Personal and business data."""


# --- the pre-filter -------------------------------------------------------------------------

_MAYBE_FINDING = re.compile(
    r"[@$:=+]|PRIVATE KEY|eyJ|Users|/home/|[A-Za-z0-9_/+-]{15}|[A-Z]{2}\d{2}|\d{4}[ -]?\d{4}|\d{3}[.-]\d{3}"
    r"|\(\d{3}\)|\d\.\d|(?i:pass|pwd|secret|token|key|credential|signature|session)"
)
"""Something every built-in rule needs to find anything (a separator, a long token, a keyword...):
text without it is skipped at once."""
