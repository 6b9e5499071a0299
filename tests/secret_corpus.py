"""Planted secrets and personal data: what must never reach disk, a log line or a receipt.

Each :class:`Planted` is the text an agent might send or receive (``text``), the part of it that
must never be stored (``core``), and the placeholder kind the redactor should write. Values are
random but fixed (seeded), shaped like the real thing, and unique, so a search of the stored
bytes finds them only if they leaked.
"""

from __future__ import annotations

import base64
import json
import random
import string
from dataclasses import dataclass

_rng = random.Random(20261122)
ALNUM = string.ascii_letters + string.digits
_HEX = "0123456789abcdef"


def rand(n: int, alphabet: str = ALNUM) -> str:
    while True:
        value = "".join(_rng.choice(alphabet) for _ in range(n))
        # Shaped like real keys: letters and digits mixed (as every real key of this length is).
        if alphabet != ALNUM or (any(c.isdigit() for c in value) and any(c.isupper() for c in value)):
            return value


@dataclass(frozen=True)
class Planted:
    kind: str
    """The placeholder the redactor writes, e.g. ``[REDACTED:openai_key]`` or ``[EMAIL]``."""
    text: str
    """How it appears in a prompt or response."""
    core: str
    """The part that must never be stored."""


def _luhn_complete(prefix: str, length: int) -> str:
    digits = prefix + "".join(_rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    for check in string.digits:
        candidate = digits + check
        total = 0
        for i, ch in enumerate(reversed(candidate)):
            n = int(ch)
            if i % 2:
                n = n * 2 - 9 if n > 4 else n * 2
            total += n
        if total % 10 == 0:
            return candidate
    raise AssertionError


def _iban(country: str, bban: str) -> str:
    moved = bban + country + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in moved)) % 97
    return f"{country}{check:02d}{bban}"


def _jwt() -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part({'sub': rand(10), 'name': 'Zed Quorra'})}.{rand(43, ALNUM + '-_')}"


def _pem() -> str:
    body = "\n".join(rand(64, ALNUM + "+/") for _ in range(6))
    return f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----"


def _key(kind: str, value: str, text: str | None = None) -> Planted:
    return Planted(f"[REDACTED:{kind}]", text or value, value)


def _grouped(number: str, sep: str) -> str:
    return sep.join(number[i:i + 4] for i in range(0, len(number), 4))


OPENAI_KEY = "sk-proj-" + rand(48) + "T3BlbkFJ" + rand(48)
ANTHROPIC_KEY = "sk-ant-api03-" + rand(93, ALNUM + "-_") + "AA"
GOOGLE_KEY = "AIza" + rand(35, ALNUM + "-_")

_aws_secret = rand(40, ALNUM + "/+")
_pem_key = _pem()
_jwt_token = _jwt()
_cards = [_luhn_complete("4", 16), _luhn_complete("53", 16), _luhn_complete("37", 15), _luhn_complete("6011", 16)]
_ibans = [_iban("GB", "WEST" + "".join(_rng.choice(string.digits) for _ in range(14))),
          _iban("DE", "".join(_rng.choice(string.digits) for _ in range(18))),
          _iban("FR", "".join(_rng.choice(string.digits) for _ in range(23)))]

CORPUS: list[Planted] = [
    # Provider keys
    _key("openai_key", OPENAI_KEY),
    _key("openai_key", "sk-" + rand(48)),
    _key("openai_key", "sk-svcacct-" + rand(60, ALNUM + "-_")),
    _key("anthropic_key", ANTHROPIC_KEY),
    _key("anthropic_key", "sk-ant-admin01-" + rand(80, ALNUM + "_-")),
    _key("google_key", GOOGLE_KEY),
    _key("google_key", "AIza" + rand(35)),
    # Cloud and forge tokens
    _key("aws_access_key", "AKIA" + rand(16, string.ascii_uppercase + string.digits)),
    _key("aws_access_key", "ASIA" + rand(16, string.ascii_uppercase + string.digits)),
    Planted("[REDACTED:aws_secret_key]", f"aws_secret_access_key = {_aws_secret}", _aws_secret),
    _key("aws_secret_key", rand(40, ALNUM + "/+")),
    _key("github_token", "ghp_" + rand(36)),
    _key("github_token", "gho_" + rand(36)),
    _key("github_token", "github_pat_" + rand(22) + "_" + rand(59)),
    _key("gitlab_token", "glpat-" + rand(20, ALNUM + "-_")),
    _key("slack_token", "xoxb-" + "-".join(rand(n, string.digits) for n in (12, 13)) + "-" + rand(24)),
    _key("slack_token", "xoxp-" + "-".join(rand(n, string.digits) for n in (12, 12, 13)) + "-" + rand(32)),
    _key("slack_webhook", "https://hooks.slack.com/services/T" + rand(8) + "/B" + rand(10) + "/" + rand(24)),
    _key("stripe_key", "sk_live_" + rand(99)),
    _key("stripe_key", "rk_test_" + rand(24)),
    _key("stripe_key", "whsec_" + rand(32)),
    _key("huggingface_token", "hf_" + rand(34)),
    _key("jwt", _jwt_token),
    # Auth in text
    Planted("[REDACTED:bearer_token]", "curl -H 'Authorization: Bearer " + (t := rand(40, ALNUM + "._-")) + "'", t),
    Planted("[REDACTED:bearer_token]", "use bearer " + (t := rand(32)) + " for the staging API", t),
    Planted("[REDACTED:auth_header]", "Authorization: Basic " + (t := base64.b64encode(b"deploy:" + rand(16).encode()).decode()), t),
    Planted("[REDACTED:auth_header]", "x-api-key: " + (t := rand(32, string.hexdigits.lower())), t),
    Planted("[REDACTED:cookie]", "Cookie: sessionid=" + (t := rand(32)) + "; csrftoken=" + rand(32), t),
    Planted("[REDACTED:private_key]", _pem_key, _pem_key.splitlines()[3]),
    # Passwords and secrets in KEY=value / JSON / URL forms
    Planted("[REDACTED:password]", "DB_PASSWORD=" + (t := "Tr0ub4dor&" + rand(6)), t),
    Planted("[REDACTED:password]", 'password: "' + (t := "correct horse " + rand(8)) + '"', t),
    Planted("[REDACTED:password]", '{"password": "' + (t := "Pl4net-" + rand(10)) + '"}', t),
    Planted("[REDACTED:password]", "postgres://admin:" + (t := "Zq" + rand(14)) + "@db.internal:5432/app", t),
    Planted("[REDACTED:password]", "https://deploy:" + (t := rand(20)) + "@git.example.org/repo.git", t),
    Planted("[REDACTED:password]", "my password is " + (t := "Sunfl0wer" + rand(5)), t),
    Planted("[REDACTED:password]", "client_secret='" + (t := rand(40)) + "'", t),
    Planted("[REDACTED:secret]", "export SERVICE_API_KEY=" + (t := rand(32)), t),
    Planted("[REDACTED:secret]", '"access_token": "' + (t := rand(48, ALNUM + "-_.")) + '"', t),
    Planted("[REDACTED:secret]", "REFRESH_TOKEN: " + (t := rand(44)), t),
    Planted("[REDACTED:secret]", "signature=" + (t := rand(64, string.hexdigits.lower())), t),
    # Personal data
    Planted("[EMAIL]", t := "zed.quorra@example.com", t),
    Planted("[EMAIL]", t := "marcus+billing@acme-widgets.co.uk", t),
    Planted("[EMAIL]", t := "j.vantreight@corp.internal.io", t),
    Planted("[PHONE]", t := "+1 415 555 0134", t),
    Planted("[PHONE]", t := "+44 20 7946 0958", t),
    Planted("[PHONE]", t := "(212) 555-0187", t),
    Planted("[PHONE]", t := "646.555.0199", t),
    Planted("[PHONE]", t := "+49 151 23456789", t),
    *(Planted("[CARD]", g, g) for g in (_grouped(card, sep) for card, sep in zip(_cards, (" ", "-", "", " ")))),
    Planted("[CARD]", _cards[2][:4] + " " + _cards[2][4:10] + " " + _cards[2][10:], _cards[2][4:10]),
    *(Planted("[IBAN]", g, g) for g in (_grouped(iban, " ") for iban in _ibans)),
    Planted("[IBAN]", _ibans[0], _ibans[0]),
    # Paths with user names
    Planted("[PATH:~]", "/Users/zorbatrix/Documents/contract.pdf", "/Users/zorbatrix"),
    Planted("[PATH:~]", "/home/quillfeather/.ssh/id_ed25519", "/home/quillfeather"),
    Planted("[PATH:~]", "C:\\Users\\Bramblewood\\AppData\\Roaming\\app.ini", "Users\\Bramblewood"),
    Planted("[PATH:~]", "C:/Users/Fennimore/Desktop/notes.txt", "Users/Fennimore"),
    # Addresses and money
    Planted("[IP:private]", t := "10.42.7.19", t),
    Planted("[IP:private]", t := "192.168.178.23", t),
    Planted("[IP:private]", t := "172.20.14.250", t),
    Planted("[IP:link-local]", t := "169.254.169.254", t),
    Planted("[IP:link-local]", t := "fe80::1c2b:3fff:fe4a:9d01", t),
    Planted("[IP:private]", t := "fd12:3456:789a:1::42", t),
    Planted("[AMOUNT]", t := "$48,250.00", t),
    Planted("[AMOUNT]", t := "$1.2M", t),
    Planted("[AMOUNT]", t := "$37", t),
    # Keys of every metered provider, prefixed or bare in key-like context (appended: the values above stay)
    Planted("[REDACTED:api_key]", "the Azure OpenAI key is " + (t := rand(32, _HEX)) + ", region westeurope", t),
    Planted("[REDACTED:api_key]", "Azure AI Foundry key: " + (t := rand(84)), t),
    _key("groq_key", "gsk_" + rand(52)),
    _key("xai_key", "xai-" + rand(80)),
    Planted("[REDACTED:api_key]", "my Mistral key " + (t := rand(32)), t),
    _key("together_key", "tgp_v1_" + rand(43, ALNUM + "-_")),
    Planted("[REDACTED:api_key]", "the Together API key is " + (t := rand(64, _HEX)), t),
    _key("fireworks_key", "fw_" + rand(24)),
    _key("openai_key", "sk-" + rand(32, _HEX)),  # DeepSeek: OpenAI's shape
    _key("openrouter_key", "sk-or-v1-" + rand(64, _HEX)),
    Planted("[REDACTED:google_key]", "GEMINI_API_KEY=" + (t := "AIza" + rand(35, ALNUM + "-_")), t),
    _key("perplexity_key", "pplx-" + rand(48)),
    _key("cerebras_key", "csk-" + rand(48, string.ascii_lowercase + string.digits)),
    _key("nvidia_key", "nvapi-" + rand(64, ALNUM + "-_")),
    _key("replicate_token", "r8_" + rand(37)),
    # An address at the end of a sentence
    Planted("[IP:private]", "the database answers on " + (t := "10.42.17.233") + ".", t),
]


def planted_text(items: list[Planted] = CORPUS) -> str:
    """Every item in running text, one per line, as a user might paste them."""
    return "\n".join(f"note {i}: {item.text} (end)" for i, item in enumerate(items))
