"""Config and rules together: what ``check``, ``eval`` and the daemon load."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from balwatch.adapters import REPORTED_METRICS
from balwatch.config import Config, load_yaml
from balwatch.config.load import CONFIG_FILE, load_config_with_warnings
from balwatch.errors import Problem
from balwatch.rules.load import ListedIn, RuleSet, load_rule_set
from balwatch.rules.rule import Rule


class Loaded(NamedTuple):
    config: Config
    rules: tuple[Rule, ...]
    warnings: tuple[Problem, ...]
    files: tuple[str, ...]  # the config and every rule file read: what a reload watches


def load_all(path: Path, environ: Mapping[str, str] | None = None) -> Loaded:
    """The config and its rules; raises ConfigError with every problem of both."""
    config, warnings = load_config_with_warnings(path, environ=environ)
    rule_set = load_config_rules(config, path)
    return Loaded(
        config, rule_set.rules, (*warnings, *rule_set.warnings), (str(path), *rule_set.files)
    )


def load_config_rules(config: Config, path: Path) -> RuleSet:
    """The rules that ``config`` (read from ``path``) lists, checked against its sinks and
    accounts; raises ConfigError with every problem."""
    return load_rule_set(
        config.rules,
        sink_names=[sink.name for sink in config.sinks],
        interval_names=[interval.name for interval in config.time_intervals],
        accounts={account.name: account.exchange for account in config.accounts},
        reported_metrics=_with_prices(config),
        listed_in=ListedIn(load_yaml(path, CONFIG_FILE), ("rules",)),
    )


def _with_prices(config: Config) -> Mapping[str, frozenset[str]]:
    """What each source reports; with ``prices:`` set, every source's rows get a rate_usd."""
    if config.prices is None or not (config.prices.static or config.prices.sources):
        return REPORTED_METRICS
    return {name: metrics | {"rate_usd"} for name, metrics in REPORTED_METRICS.items()}
