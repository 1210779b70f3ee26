from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from balwatch.config import load_yaml
from balwatch.config.substitute import Substituted, substitute

WriteFile = Callable[..., Path]


def run(write: WriteFile, text: str, environ: dict[str, str]) -> Substituted:
    return substitute(load_yaml(write(text)), environ)


def test_variable_anywhere_inside_a_string(write: WriteFile) -> None:
    result = run(
        write,
        "url: mqtts://user:${MQTT_PASSWORD}@host:8883\nn: 5\n",
        {"MQTT_PASSWORD": "pw"},
    )
    assert result.data == {"url": "mqtts://user:pw@host:8883", "n": 5}
    assert result.paths == {("url",)}
    assert not result.problems


def test_escape_gives_a_literal_reference(write: WriteFile) -> None:
    result = run(write, "a: cost $${HOME} and $5 and ${X}\n", {"X": "x", "HOME": "/root"})
    assert result.data == {"a": "cost ${HOME} and $5 and x"}


def test_only_escapes_is_not_a_substituted_value(write: WriteFile) -> None:
    result = run(write, "a: $${X}\n", {})
    assert result.data == {"a": "${X}"}
    assert result.paths == frozenset()


def test_values_are_not_expanded_twice(write: WriteFile) -> None:
    result = run(write, "a: ${X}\n", {"X": "${Y}", "Y": "no"})
    assert result.data == {"a": "${Y}"}


def test_keys_are_not_substituted(write: WriteFile) -> None:
    result = run(write, "${X}: 1\n", {"X": "x"})
    assert result.data == {"${X}": 1}


def test_file_reference_strips_the_trailing_newline(write: WriteFile, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("s3cret\n")
    result = run(write, f"a: ${{file:{tmp_path}/secret.txt}}\nb: ${{file:secret.txt}}\n", {})
    assert result.data == {"a": "s3cret", "b": "s3cret"}  # relative to the YAML file


def test_cred_reference_reads_credentials_directory(write: WriteFile, tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "bitso_secret").write_text("abc\r\n")
    result = run(write, "a: ${cred:bitso_secret}\n", {"CREDENTIALS_DIRECTORY": str(creds)})
    assert result.data == {"a": "abc"}


def test_missing_variable_is_a_problem_at_the_scalar(write: WriteFile) -> None:
    result = run(write, "accounts:\n  - key: pre-${BITSO_KEY}\n", {})
    [problem] = result.problems
    assert (problem.line, problem.column) == (2, 10)
    assert problem.message == "environment variable BITSO_KEY is not set (used as ${BITSO_KEY})"
    assert result.failed == {("accounts", 0, "key")}


def test_every_failed_reference_in_a_value_is_reported(write: WriteFile) -> None:
    result = run(write, "a: ${A}:${B}\n", {})
    assert [p.message.split()[2] for p in result.problems] == ["A", "B"]


def test_missing_file(write: WriteFile, tmp_path: Path) -> None:
    result = run(write, "a: ${file:/nonexistent/pw}\n", {})
    [problem] = result.problems
    assert problem.message == (
        "cannot read /nonexistent/pw for ${file:/nonexistent/pw}: No such file or directory"
    )


def test_cred_without_credentials_directory(write: WriteFile) -> None:
    result = run(write, "a: ${cred:x}\n", {})
    [problem] = result.problems
    assert problem.message.startswith("${cred:x} needs $CREDENTIALS_DIRECTORY, which is not set")


def test_missing_cred_file(write: WriteFile, tmp_path: Path) -> None:
    result = run(write, "a: ${cred:gone}\n", {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    [problem] = result.problems
    assert problem.message.startswith(f"cannot read {tmp_path}/gone for ${{cred:gone}}")


@pytest.mark.parametrize(
    "text", ["a: ${cred:../etc/passwd}\n", "a: ${}\n", "a: ${X:-default}\n", "a: ${nope:x}\n"]
)
def test_invalid_references(write: WriteFile, text: str) -> None:
    [problem] = run(write, text, {"CREDENTIALS_DIRECTORY": "/tmp"}).problems
    assert problem.message.startswith("invalid reference ${")
    assert "write $${ for a literal ${" in problem.message


def test_unterminated_reference(write: WriteFile) -> None:
    [problem] = run(write, "a: x${Y\n", {"Y": "y"}).problems
    assert problem.message.startswith("unterminated '${' in value")
