"""config.toml's schema (meterproxy/schema.py): keys, defaults, bounds, aliases, secrets and the one-line errors."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from meterproxy.config import Config, ForwardSettings, Home
from meterproxy.errors import MeterproxyError
from meterproxy.schema import SchemaError, SecretStr


def test_defaults_and_values_converted_the_lenient_way() -> None:
    config = Config()
    assert (config.proxy.port, config.storage.store, config.forward.batch_size, config.budgets.warn_at) == (
        8788, "preview", 10, 0.8)
    assert config.budgets.agents == {} and config.budgets.each_agent.daily_usd is None
    loaded = Config.load({
        "proxy": {"port": "9000", "auth": {"bob": "pw"}},
        "forward": {"LOCKN_LOGGER_BATCH_SIZE": 5.0, "include_local": "false", "timeout": 3},
        "budgets": {"daily_usd": 2, "agents": {"bob": {"monthly_tokens": 1000}}},
    })
    assert loaded.proxy.port == 9000 and loaded.forward.batch_size == 5 and loaded.forward.include_local is False
    assert isinstance(loaded.forward.timeout, float) and loaded.budgets.daily_usd == 2.0
    assert loaded.budgets.agents["bob"].monthly_tokens == 1000
    assert loaded.proxy.auth["bob"].get_secret_value() == "pw"
    assert loaded == Config.load({"proxy": {"port": 9000, "auth": {"bob": "pw"}}, "forward": {
        "batch_size": 5, "include_local": False, "timeout": 3.0}, "budgets": {
        "daily_usd": 2.0, "agents": {"bob": {"monthly_tokens": 1000}}}})


def test_secrets_stay_out_of_repr_and_direct_construction_is_checked_too() -> None:
    forward = ForwardSettings(endpoint="https://logger.test/r", api_key="sk-very-secret")
    assert isinstance(forward.api_key, SecretStr) and forward.api_key.get_secret_value() == "sk-very-secret"
    assert "sk-very-secret" not in repr(forward) and "**********" in repr(forward)
    assert "sk-very-secret" not in repr(Config.load({"otel": {"headers": {"x-key": "sk-very-secret"}}}))
    with pytest.raises(SchemaError, match="batch_size: Input should be greater than or equal to 1"):
        ForwardSettings(batch_size=0)
    with pytest.raises(SchemaError, match="endpoint: must be an http:// or https:// URL"):
        dataclasses.replace(forward, endpoint="ftp://logger.test")


@pytest.mark.parametrize(("data", "where", "message"), [
    ({"proxy": {"prot": 1}}, ("proxy", "prot"), "Extra inputs are not permitted"),
    ({"proxy": {"port": 70000}}, ("proxy", "port"), "Input should be less than or equal to 65535"),
    ({"storage": {"store": "all"}}, ("storage", "store"), "Input should be 'none', 'preview' or 'full'"),
    ({"forward": {"lockn_logger_batch_size": "many"}}, ("forward", "lockn_logger_batch_size"),
     "Input should be a valid integer, unable to parse string as an integer"),
    ({"forward": {"endpoint": "http://a", "LOCKN_LOGGER_ENDPOINT": "http://b"}}, ("forward", "LOCKN_LOGGER_ENDPOINT"),
     "Extra inputs are not permitted"),
    ({"budgets": {"tz": "Mars/Olympus"}}, ("budgets", "tz"),
     "unknown time zone 'Mars/Olympus' (use an IANA name such as Europe/Paris)"),
    ({"budgets": {"agents": {"bob": 5}}}, ("budgets", "agents", "bob"),
     "Input should be a valid dictionary or instance of BudgetLimits"),
    ({"redact": {"patterns": {"x": "("}}}, ("redact",), "patterns.x: bad regular expression"),
    ({"redact": {"allow": "x"}}, ("redact", "allow"), "Input should be a valid list"),
    ({"logs": {"jsonl": "maybe"}}, ("logs", "jsonl"), "Input should be a valid boolean, unable to interpret input"),
])
def test_each_problem_names_its_key(data: dict, where: tuple, message: str) -> None:
    with pytest.raises(SchemaError) as caught:
        Config.load(data)
    assert caught.value.loc == where and caught.value.message.startswith(message)


def test_every_problem_is_listed_fields_first_unknown_keys_last() -> None:
    with pytest.raises(SchemaError) as caught:
        Config.load({"bogus": 1, "proxy": {"port": -1, "extra": 2}, "storage": {"preview_chars": 0}})
    assert [loc for loc, _ in caught.value.problems] == [
        ("proxy", "port"), ("proxy", "extra"), ("storage", "preview_chars"), ("bogus",)]


def test_a_bad_config_file_is_one_line_naming_file_key_and_problem(home: Path) -> None:
    Path(home).mkdir(parents=True, exist_ok=True)
    config = Path(home) / "config.toml"
    config.write_text("[budgets.each_agent]\ndaily_usd = -1\n", encoding="utf-8")
    with pytest.raises(MeterproxyError) as caught:
        Home(Path(home)).load_config()
    assert str(caught.value) == f"{config}: budgets.each_agent.daily_usd: Input should be greater than 0"
    done = subprocess.run([sys.executable, "-m", "meterproxy", "budget", "--home", str(home)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr == f"meterproxy: error: {config}: budgets.each_agent.daily_usd: Input should be greater than 0\n"
