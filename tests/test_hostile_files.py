"""Hostile and careless files through every YAML loader (issue 12, items 4, 7 and 8).

Each runs the command a user runs, in a real process: ``check`` for the config and its rules,
``test`` for rule tests, ``simulate`` for scenarios. The process gets a 1 GiB address-space
limit, so an alias bomb that is expanded fails the test by running out of memory instead of
taking the machine's.
"""

from __future__ import annotations

import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from balwatch.config.yamlsource import MAX_ALIAS_VALUES

MEMORY_LIMIT = 1 << 30
TIMEOUT = 30.0


def bomb(levels: int = 9, key: str = "x") -> str:
    """The reported bomb: 9 levels of 9 aliases, about 450 bytes, 387 million strings."""
    lines = [f'{key}0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{key}{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def balwatch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "balwatch", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=TIMEOUT,
        preexec_fn=limit_memory,
        check=False,
    )


def problems(stderr: str) -> list[tuple[str, int, int, str]]:
    return [
        (m[1], int(m[2]), int(m[3]), m[4])
        for m in re.finditer(r"^(.+?):(\d+):(\d+): error: (.*)$", stderr, re.MULTILINE)
    ]


# --- item 4: alias bombs --------------------------------------------------------------


def test_the_reported_bomb_is_about_450_bytes() -> None:
    assert 400 < len(bomb().encode()) < 500


@pytest.mark.parametrize("where", ["config", "rules", "rule test", "scenario"])
def test_an_alias_bomb_is_refused_at_its_position_in_every_file(tmp_path: Path, where: str) -> None:
    (tmp_path / "ok.rules.yaml").write_text("rules:\n  - {name: low, when: available < 1}\n")
    config = tmp_path / "balwatch.yaml"
    config.write_text("rules: ['ok.rules.yaml']\n")
    # The bomb goes where each file accepts a mapping, so that it reaches validation (and,
    # in the config, substitution); `line` is that of its sixth level, the first value past
    # the limit (9**6 = 531,441 strings).
    if where == "config":
        config.write_text(
            "rules: ['ok.rules.yaml']\naccounts:\n  - name: a\n    exchange: bitso\n"
            "    credentials: {api_key: k, api_secret: s}\n    labels:\n" + indent(bomb(), 6)
        )
        done, target, line = balwatch("check", "-c", "balwatch.yaml", cwd=tmp_path), config, 12
    elif where == "rules":
        bombed = tmp_path / "bomb.rules.yaml"
        bombed.write_text(
            "rules:\n  - name: r\n    when: available < 1\n    labels:\n" + indent(bomb(), 6)
        )
        config.write_text("rules: ['*.rules.yaml']\n")
        done, target, line = balwatch("check", "-c", "balwatch.yaml", cwd=tmp_path), bombed, 10
    elif where == "rule test":
        target = tmp_path / "bomb.test.yaml"
        target.write_text(
            "rule_files: [ok.rules.yaml]\nalert_tests: []\naccounts:\n" + indent(bomb(), 2)
        )
        done, line = balwatch("test", target.name, cwd=tmp_path), 9
    else:
        target = tmp_path / "scenario.yaml"
        target.write_text(
            "accounts:\n  - name: a\n    exchange: bitso\n    balances:\n" + indent(bomb(), 6)
        )
        done, line = balwatch("simulate", "--scenario", target.name, cwd=tmp_path), 10
    assert done.returncode == 1, done.stderr
    [(file, at_line, column, message)] = problems(done.stderr)
    assert Path(file).name == target.name
    assert at_line == line, done.stderr
    assert column > 1
    assert "aliases expand this value to" in message
    assert f"{MAX_ALIAS_VALUES:,}" in message
    assert "MemoryError" not in done.stderr and "Traceback" not in done.stderr


def indent(text: str, spaces: int) -> str:
    return "".join(" " * spaces + line + "\n" for line in text.splitlines())


def test_anchors_that_share_settings_between_many_accounts_still_load(tmp_path: Path) -> None:
    accounts = "".join(f"  - {{<<: *bitso, name: acct-{i}, labels: *desk}}\n" for i in range(300))
    (tmp_path / "balwatch.yaml").write_text(
        "rules: []\n"
        "x-shared:\n"
        "  bitso: &bitso {exchange: bitso, credentials: {api_key: k, api_secret: s}}\n"
        "  desk: &desk {desk: treasury, team: ops, region: mx}\n"
        "accounts:\n" + accounts
    )
    done = balwatch("check", "-c", "balwatch.yaml", cwd=tmp_path)
    # x-shared is an unknown key (an error of its own): the anchors themselves passed.
    assert "aliases expand" not in done.stderr
    [message] = [message for *_, message in problems(done.stderr)]
    assert message.startswith("unknown key 'x-shared' in the config; expected one of: ")


# --- item 8: a file that is not YAML the user wrote -----------------------------------

PASSWD = (
    "root:x:0:0:root:/root:/bin/bash\n"
    "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
    "treasury:SECRET-hash-7f3e9a:1000:1000::/home/treasury:/bin/sh\n"
)
SOURCES = "Types: deb\nURIs: http://deb.example\nSuites: stable\nSigned-By: SECRET-key-4c2d\n"
NETRC_JSON = '{"auths": {"registry.example": {"auth": "SECRET-base64-9a8b"}}}\n'
# Syntax errors whose pyyaml message quotes what it found: an undefined alias, a tag.
UNDEFINED_ALIAS = "rules: *SECRET_alias_name\n"
TAGGED = "rules: !SECRET-tag-value [1]\n"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (PASSWD, "not a rule file"),
        (SOURCES, "not a rule file"),
        (NETRC_JSON, "not a rule file"),
        (UNDEFINED_ALIAS, "invalid YAML"),
        (TAGGED, "unsupported YAML tag"),
    ],
)
def test_a_rule_glob_that_matches_another_file_never_quotes_it(
    tmp_path: Path, content: str, expected: str
) -> None:
    (tmp_path / "passwd").write_text(content)
    (tmp_path / "balwatch.yaml").write_text("rules: [passwd]\n")
    done = balwatch("check", "-c", "balwatch.yaml", cwd=tmp_path)
    assert done.returncode == 1
    [(file, line, column, message)] = problems(done.stderr)
    assert file.endswith("passwd") and line >= 1 and column >= 1
    assert expected in message
    assert "SECRET" not in done.stderr + done.stdout


def test_the_real_etc_passwd_is_never_quoted(tmp_path: Path) -> None:
    passwd = Path("/etc/passwd")
    if not passwd.is_file():
        pytest.skip("no /etc/passwd here")
    (tmp_path / "balwatch.yaml").write_text("rules: ['/etc/passwd']\n")
    done = balwatch("check", "-c", "balwatch.yaml", cwd=tmp_path)
    assert done.returncode == 1
    assert problems(done.stderr) == [
        (
            "/etc/passwd",
            1,
            1,
            "not a rule file: expected a mapping with some of defaults:, rules: at the top level",
        )
    ]
    for line in passwd.read_text().splitlines():
        for field in line.split(":")[:1]:
            assert f"'{field}" not in done.stderr


def test_a_near_miss_is_still_the_users_own_file_with_a_typo(tmp_path: Path) -> None:
    (tmp_path / "typo.rules.yaml").write_text("rule:\n  - {name: r, when: available < 1}\n")
    (tmp_path / "balwatch.yaml").write_text("rules: ['*.rules.yaml']\n")
    done = balwatch("check", "-c", "balwatch.yaml", cwd=tmp_path)
    messages = [message for *_, message in problems(done.stderr)]
    assert any("unknown key 'rule'" in m and "did you mean 'rules'" in m for m in messages)


# --- item 7: unbounded durations ------------------------------------------------------

HUGE = "9" * 400


@pytest.mark.parametrize(
    ("setting", "allowed"),
    [
        (f"defaults: {{poll_interval: {HUGE}s}}", "from 100ms to 1d"),
        (f"defaults: {{timeout: {HUGE}ms}}", "from 100ms to 10m"),
        ("defaults: {poll_interval: 1ms}", "from 100ms to 1d"),
        (
            f"sinks: [{{name: m, type: mqtt, url: 'mqtt://127.0.0.1', keepalive: {HUGE}s}}]",
            "from 1s to 65535s",
        ),
        ("sinks: [{name: m, type: mqtt, url: 'mqtt://127.0.0.1', keepalive: 500ms}]", "from 1s"),
        (
            f"sinks: [{{name: w, type: webhook, url: 'http://127.0.0.1', timeout: {HUGE}d}}]",
            "from 100ms to 10m",
        ),
    ],
)
def test_every_config_duration_is_bounded_at_its_position(
    tmp_path: Path, setting: str, allowed: str
) -> None:
    (tmp_path / "balwatch.yaml").write_text(f"rules: []\n{setting}\n")
    done = balwatch("check", "-c", "balwatch.yaml", cwd=tmp_path)
    assert done.returncode == 1
    [(_, line, column, message)] = problems(done.stderr)
    assert line == 2 and column > 1
    assert message.startswith(f"expected a duration {allowed}"), message


def rule_test(tmp_path: Path, interval: str, at: str, rules: str) -> Path:
    (tmp_path / "r.rules.yaml").write_text(rules)
    path = tmp_path / "t.test.yaml"
    path.write_text(
        f"rule_files: [r.rules.yaml]\ninterval: {interval}\n"
        "input_series:\n  - {account: a, asset: USDT, series: {available: '5x3'}}\n"
        f"alert_tests:\n  - at: {at}\n    expected_alerts: []\n"
    )
    return path


def test_a_rule_test_that_would_run_for_ever_is_refused_at_once(tmp_path: Path) -> None:
    # The report's case: 1 ms samples for ten years.
    rule_test(tmp_path, "1ms", "3650d", "rules:\n  - {name: low, when: available < 1}\n")
    done = balwatch("test", "t.test.yaml", cwd=tmp_path)
    assert done.returncode == 1
    assert sorted(problems(done.stderr)) == [
        ("t.test.yaml", 2, 11, "expected a duration from 100ms to 1d, got '1ms'"),
        ("t.test.yaml", 6, 9, "expected a duration from 0s to 366d, got '3650d'"),
    ]


def test_a_rule_test_over_the_step_limit_says_how_many_steps(tmp_path: Path) -> None:
    # Within each bound, but 300 days of 100 ms samples, and a tick each second for `age`.
    rule_test(tmp_path, "100ms", "300d", "rules:\n  - {name: stale, when: age > 5m}\n")
    done = balwatch("test", "t.test.yaml", cwd=tmp_path)
    assert done.returncode == 1
    [(file, line, column, message)] = problems(done.stderr)
    assert (file, line, column) == ("t.test.yaml", 6, 9)
    assert message.startswith("this test would take 285,120,002 steps")
    assert "more than the 1,000,000 allowed; use a longer interval or an earlier 'at'" in message
