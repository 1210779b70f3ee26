"""Lease keys from a config and its rules: credential groups, united by grouped rules."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from balwatch.cluster.keys import lease_keys
from balwatch.config import Config, load_config
from balwatch.rules.expr import parse_expression
from balwatch.rules.rule import Rule
from balwatch.rules.select import Selector


def config(tmp_path: Path, *accounts: tuple[str, str, str | None]) -> Config:
    """Accounts as (name, exchange, api_key or None for a keyless one)."""
    lines = []
    for name, exchange, key in accounts:
        creds = "" if key is None else f", credentials: {{api_key: {key}, api_secret: s}}"
        lines.append(f"  - {{name: {name}, exchange: {exchange}{creds}}}\n")
    path = tmp_path / "balwatch.yaml"
    path.write_text(f"state_dir: {tmp_path}\naccounts:\n" + "".join(lines))
    return load_config(path, {})


def grouped(name: str, accounts: Sequence[str] = ()) -> Rule:
    return Rule(
        name=name,
        when=parse_expression("sum(total) < 1"),
        group_by=("asset",),
        selector=Selector(accounts=list(accounts)),
    )


def row_rule(name: str) -> Rule:
    return Rule(name=name, when=parse_expression("total < 1"))


def test_accounts_sharing_a_credential_share_a_key_and_the_others_are_alone(
    tmp_path: Path,
) -> None:
    cfg = config(
        tmp_path,
        ("a", "bitso", "k1"),
        ("b", "bitso", "k1"),
        ("c", "bitso", "k2"),
        ("d", "coinw", "k1"),  # same key text on another exchange: another credential
    )
    keys = lease_keys(cfg, [row_rule("r")])
    assert keys.owners["a"] == keys.owners["b"]
    assert len({keys.owners[n] for n in "bcd"}) == 3
    assert sorted(map(sorted, keys.accounts.values())) == [["a", "b"], ["c"], ["d"]]


def test_key_names_carry_no_secret_and_are_the_same_for_the_same_config(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path, ("a", "bitso", "topsecret-key"), ("b", "coinw", "topsecret-2"))
    keys = lease_keys(cfg, [])
    assert not any("topsecret" in key for key in keys.keys)
    assert keys == lease_keys(config(tmp_path, *[("a", "bitso", "topsecret-key"),
                                                 ("b", "coinw", "topsecret-2")]), [])  # fmt: skip


def test_a_grouped_rule_unites_the_keys_of_the_accounts_it_selects(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        ("a", "bitso", "k1"),
        ("b", "bitso", "k2"),
        ("c", "bitso", "k3"),
        ("d", "bitso", "k4"),
    )
    keys = lease_keys(cfg, [grouped("ab", ["a", "b"]), row_rule("rows")])
    assert keys.owners["a"] == keys.owners["b"] == keys.owners["#ab"]
    assert len({keys.owners["a"], keys.owners["c"], keys.owners["d"]}) == 3
    assert "#rows" not in keys.owners  # a row rule owns nothing of its own


def test_a_grouped_rule_over_every_account_puts_them_all_under_one_key(tmp_path: Path) -> None:
    cfg = config(tmp_path, ("a", "bitso", "k1"), ("b", "coinw", "k2"), ("c", "bitso", "k3"))
    keys = lease_keys(cfg, [grouped("all")])
    assert len(keys.keys) == 1
    assert keys.accounts_of(keys.keys) == ["a", "b", "c"]
    assert keys.owners_of(keys.keys) == {o: keys.keys[0] for o in ("a", "b", "c", "#all")}


def test_groups_chain_through_shared_accounts(tmp_path: Path) -> None:
    cfg = config(tmp_path, ("a", "bitso", "k1"), ("b", "bitso", "k2"), ("c", "bitso", "k3"))
    keys = lease_keys(cfg, [grouped("ab", ["a", "b"]), grouped("bc", ["b", "c"])])
    assert len(keys.keys) == 1


def test_a_grouped_rule_that_selects_nothing_owns_nothing(tmp_path: Path) -> None:
    cfg = config(tmp_path, ("a", "bitso", "k1"))
    keys = lease_keys(cfg, [grouped("none", ["zzz"])])
    assert keys.key_of("#none") is None
    assert keys.key_of("a") is not None
