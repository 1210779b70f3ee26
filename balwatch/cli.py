"""The ``balwatch`` command: a thin face over the library.

Exit codes: 0 success; 1 invalid config or rules (or state), or a failed rule test;
2 usage error (a bad matcher, duration or time, an unknown silence); 3 some account polls
failed; 4 a test alert was not delivered.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import sys
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from balwatch import __version__, logs, redact, terminal
from balwatch.adapters.http import new_session
from balwatch.cluster.status import read_cluster
from balwatch.config import Config, load_config
from balwatch.config.load import load_config_with_warnings
from balwatch.daemon import Daemon, StartError, capture_signals
from balwatch.demo.story import MQTT_PORT, run_demo
from balwatch.errors import ConfigError, Problem
from balwatch.explain import Poll, explain
from balwatch.loading import load_config_rules
from balwatch.money import decimal_text
from balwatch.oncall import add_commands as add_oncall_commands
from balwatch.outbox.sendtest import send_test
from balwatch.poll import PollResult, make_adapter, poll_all, priced
from balwatch.prices.book import PriceBook
from balwatch.prices.feeds import PriceFeeds
from balwatch.rules.engine import Engine
from balwatch.rules.load import RuleSet
from balwatch.rules.ruletest import plural, run_tests
from balwatch.schema import SchemaKind, schema_text
from balwatch.simulator.scenario import load_scenario
from balwatch.simulator.server import Simulator
from balwatch.sinks.registry import build_sink
from balwatch.state import state_store
from balwatch.state.base import NoState, StateError
from balwatch.statecli import add_commands as add_state_commands
from balwatch.table import balances_table, failures_table, render_table

EXIT_OK, EXIT_CONFIG, EXIT_POLL_FAILED, EXIT_SEND_FAILED = 0, 1, 3, 4
DEFAULT_SIM_PORT = 8700


def _demo_file(name: str) -> Path:
    return Path(str(resources.files("balwatch.demo").joinpath(name)))


def _out(text: object, *, err: bool = False) -> None:
    """Print ``text``: every configured secret masked (in any form), control characters
    escaped. All output of the commands that load a config goes through here."""
    shown = terminal.escape(redact.installed().text(str(text)), keep="\n")
    print(shown, file=sys.stderr if err else sys.stdout)


def _load(path: Path, environ: dict[str, str] | None = None) -> Config | None:
    """The config, its secrets installed for masking; or None after printing every problem
    to stderr."""
    try:
        config = load_config(path, environ=environ)
    except ConfigError as exc:
        _print_problems(exc.problems)
        return None
    redact.install(config.secrets())
    return config


def _print_problems(problems: Sequence[Problem]) -> None:
    for problem in problems:
        _out(problem, err=True)


async def _poll(config: Config) -> list[PollResult]:
    """Every account polled once, and its rows priced from prices fetched alongside."""
    book = PriceBook(config.prices)
    async with new_session() as session:
        feeds = PriceFeeds(book, session, default_timeout=config.defaults.timeout)
        results, _ = await asyncio.gather(
            poll_all(
                make_adapter(a.exchange, config.account_spec(a), session) for a in config.accounts
            ),
            feeds.refresh(),
        )
    for result in results:
        book.learn(result.rows or ())  # a `rows` source prices every account's rows
    return [priced(result, book) for result in results]


def _print_results(results: list[PollResult], as_json: bool) -> int:
    if as_json:
        doc = {
            "balances": [row.to_json() for r in results for row in (r.rows or [])],
            "errors": [
                {
                    "account": r.account,
                    "exchange": r.exchange,
                    "kind": str(r.error.kind),
                    "message": r.error.message,
                }
                for r in results
                if r.error is not None
            ],
        }
        print(json.dumps(redact.installed().value(doc), indent=2))
    else:
        _out(balances_table(results))
        if any(not r.ok for r in results):
            _out("\nfailed polls:")
            _out(failures_table(results))
    return EXIT_OK if all(r.ok for r in results) else EXIT_POLL_FAILED


def _load_rules(config: Config, path: Path) -> RuleSet | None:
    """The config's rules, or None; every problem, warnings included, goes to stderr."""
    try:
        rule_set = load_config_rules(config, path)
    except ConfigError as exc:
        for problem in exc.problems:
            _out(problem, err=True)
        return None
    for problem in rule_set.warnings:
        _out(problem, err=True)
    return rule_set


def cmd_check(args: argparse.Namespace) -> int:
    try:
        config, warnings = load_config_with_warnings(args.config)
    except ConfigError as exc:
        _print_problems(exc.problems)
        return EXIT_CONFIG
    redact.install(config.secrets())  # a rule file may quote a secret pasted by mistake
    _print_problems(warnings)  # risky settings: reported, never fatal
    rule_set = _load_rules(config, args.config)
    if rule_set is None:
        return EXIT_CONFIG
    counts = [
        plural(len(config.accounts), "account"),
        f"{plural(len(rule_set.rules), 'rule')} in {plural(len(rule_set.files), 'file')}",
        plural(len(config.sinks), "sink"),
    ]
    if warnings or rule_set.warnings:
        counts.append(plural(len(warnings) + len(rule_set.warnings), "warning"))
    _out(f"{args.config}: ok ({', '.join(counts)})")
    if args.connect:
        return _check_state(config)
    return EXIT_OK


def _check_state(config: Config) -> int:
    """Open the configured state store beside a running daemon (creating nothing), and say
    whether it can be used."""

    async def open_it() -> str:
        store = state_store(config, exclusive=False)
        try:
            async with store:
                await store.changes()
        except NoState:
            return f"state: {store.location}: reachable, no balwatch state yet (`run` creates it)"
        return f"state: {store.location}: ok"

    try:
        _out(asyncio.run(open_it()))
    except StateError as exc:
        _out(f"state: {exc}", err=True)
        return EXIT_CONFIG
    return EXIT_OK


def cmd_cluster_status(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    if config.state.backend != "postgres":
        _out(f"error: {args.config}: state.backend is sqlite: one daemon, no replicas", err=True)
        return EXIT_CONFIG
    rule_set = _load_rules(config, args.config)
    if rule_set is None:
        return EXIT_CONFIG
    try:
        doc = asyncio.run(read_cluster(config, rule_set.rules))
    except StateError as exc:
        _out(f"error: {exc}", err=True)
        return EXIT_CONFIG
    _out(json.dumps(doc, indent=2) if args.json else _cluster_text(doc))
    return EXIT_OK


def _cluster_text(doc: dict[str, Any]) -> str:
    replicas = [
        [
            r["instance"],
            "live" if r["live"] else "gone",
            f"{r['heartbeat_age']:.1f}s ago",
            str(r["started_at"]),
            str(r["version"]),
            r["address"] or "-",
        ]
        for r in doc["replicas"]
    ]
    leases = [
        [
            lease["key"],
            lease["owner"] if lease["owner"] and lease["remaining"] > 0 else "-",
            str(lease["token"]),
            f"{max(lease['remaining'], 0):.1f}s",
            ", ".join(lease["accounts"]) or "(not in this config)",
        ]
        for lease in doc["leases"]
    ]
    parts = [
        f"replicas (lease ttl {doc['lease_ttl']:g}s):",
        render_table(["instance", "state", "heartbeat", "started", "version", "address"], replicas),
        "",
        "leases:",
        render_table(["key", "owner", "token", "left", "accounts"], leases),
    ]
    if doc["unowned_accounts"]:
        parts += ["", "accounts no replica holds: " + ", ".join(doc["unowned_accounts"])]
    return "\n".join(parts)


def cmd_balances(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    logs.configure(config.log.format, config.log.level)
    return _print_results(asyncio.run(_poll(config)), args.json)


def cmd_eval(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    rule_set = _load_rules(config, args.config)
    if rule_set is None:
        return EXIT_CONFIG
    logs.configure(config.log.format, config.log.level)
    results = asyncio.run(_poll(config))
    now = time.time()
    labels = {account.name: account.labels for account in config.accounts}
    engine = Engine(rule_set.rules, clock=lambda: now, account_labels=labels)
    alerts = []
    for r in results:
        if r.rows is None:
            alerts += engine.poll_failed(r.account, r.exchange)
        else:
            alerts += engine.observe(r.account, r.exchange, r.rows)
    alerts += engine.tick()  # groups are evaluated on ticks
    polls = [Poll(r.account, r.exchange, r.rows) for r in results]
    views = engine.groups.views(now)
    _out(explain(rule_set.rules, polls, alerts, engine.pending(), views))
    rates = sorted({(row.asset, row.rate_usd) for r in results for row in r.rows or ()
                    if row.rate_usd is not None})  # fmt: skip
    if rates:
        _out("\nrate_usd: " + ", ".join(f"{asset} {decimal_text(rate)}" for asset, rate in rates))
    if any(not r.ok for r in results):
        _out("\nfailed polls:")
        _out(failures_table(results))
        return EXIT_POLL_FAILED
    return EXIT_OK


def cmd_test(args: argparse.Namespace) -> int:
    return run_tests(args.files)


def cmd_schema(args: argparse.Namespace) -> int:
    kind: SchemaKind = (
        "rules" if args.rules else "tests" if args.tests else "alert" if args.alert else "config"
    )
    print(schema_text(kind), end="")
    return EXIT_OK


async def _run_daemon(daemon: Daemon) -> int:
    with capture_signals(daemon):
        return await daemon.run()


def cmd_run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run_daemon(Daemon(args.config)))
    except ConfigError as exc:
        for problem in exc.problems:
            _out(problem, err=True)
        return EXIT_CONFIG
    except (StateError, StartError) as exc:
        _out(f"error: {exc}", err=True)
        return EXIT_CONFIG
    except OSError as exc:  # e.g. a TLS file that is not a certificate
        _out(f"error: cannot start: {exc}", err=True)
        return EXIT_CONFIG


def cmd_send_test(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    logs.configure(config.log.format, config.log.level)
    try:
        result = asyncio.run(send_test(config, args.sink, build_sink, timeout=args.timeout))
    except ValueError as exc:
        _out(f"error: {exc}", err=True)
        return EXIT_CONFIG
    if result.delivered:
        _out(f"{args.sink}: delivered test alert ({', '.join(result.alert_ids)})")
        return EXIT_OK
    _out(f"{args.sink}: NOT delivered: {result.reason}", err=True)
    return EXIT_SEND_FAILED


async def _serve_until_stopped(sim: Simulator) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def cmd_simulate(args: argparse.Namespace) -> int:
    try:
        scenario = load_scenario(args.scenario)
    except ConfigError as exc:
        for problem in exc.problems:
            _out(problem, err=True)
        return EXIT_CONFIG

    async def main() -> None:
        async with Simulator(scenario.build(), host=args.host, port=args.port) as sim:
            print(f"simulating {len(scenario.accounts)} accounts on {sim.url}", flush=True)
            print(f"control API: {sim.url}/_sim/accounts", flush=True)
            if args.write_config:
                template = _demo_file("balwatch.yaml").read_text()
                args.write_config.write_text(template.replace("${SIM_URL}", sim.url))
                print(f"wrote a config for these accounts to {args.write_config}", flush=True)
            await _serve_until_stopped(sim)

    asyncio.run(main())
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    return asyncio.run(run_demo(sys.stdout, speed=args.speed, mqtt_port=args.mqtt_port))


def _speed(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="balwatch", description=__doc__)
    parser.add_argument("--version", action="version", version=f"balwatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("-c", "--config", type=Path, required=True, help="balwatch.yaml")
        return p

    p = with_config(
        sub.add_parser("check", help="validate the config and its rules; exit 1 on any error")
    )
    p.add_argument(
        "--connect", action="store_true", help="also open the state store (PostgreSQL: connect)"
    )
    p.set_defaults(func=cmd_check)

    p = with_config(sub.add_parser("run", help="the daemon: poll, evaluate, deliver alerts"))
    p.set_defaults(func=cmd_run)

    p = with_config(sub.add_parser("send-test", help="deliver a test alert through one sink"))
    p.add_argument("--sink", required=True, help="the sink's name in the config")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for delivery")
    p.set_defaults(func=cmd_send_test)

    p = with_config(sub.add_parser("balances", help="poll every account once, print rows"))
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.set_defaults(func=cmd_balances)

    p = with_config(sub.add_parser("eval", help="poll once, show what each rule would do"))
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("test", help="run rule unit tests; exit 1 if any fails")
    p.add_argument("files", type=Path, nargs="+", metavar="FILE", help="rule test files")
    p.set_defaults(func=cmd_test)

    p = sub.add_parser(
        "schema", help="JSON Schema of the config (default), rule files or alert documents"
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--rules", action="store_true", help="of a rule file")
    which.add_argument("--tests", action="store_true", help="of a rule test file")
    which.add_argument("--alert", action="store_true", help="of an alert (MQTT, webhooks)")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("simulate", help="fake servers for all four balance APIs")
    p.add_argument("--scenario", type=Path, default=_demo_file("scenario.yaml"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_SIM_PORT)
    p.add_argument("--write-config", type=Path, help="write a balwatch config for these accounts")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("demo", help="simulators, daemon and a scripted story; no setup needed")
    # For the tests: the story played faster, alerts to a broker of their own.
    p.add_argument("--speed", type=_speed, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--mqtt-port", type=int, default=MQTT_PORT, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_demo)

    cluster = sub.add_parser("cluster", help="replicas on PostgreSQL (status)")
    verbs = cluster.add_subparsers(dest="verb", required=True)
    p = with_config(verbs.add_parser("status", help="replicas, leases and who polls what"))
    p.add_argument("--json", action="store_true", help="JSON instead of tables")
    p.set_defaults(func=cmd_cluster_status)

    add_oncall_commands(sub)
    add_state_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        code: int = args.func(args)
        return code
    return 130


if __name__ == "__main__":
    sys.exit(main())
