"""Fuzz the code that reads hostile or hand-written input: zero uncaught exceptions.

Runs the targets of ``tests/fuzzing.py`` (the four response parsers, the config and rule
loaders, the expression language; what each must and must not do is described there), each
fed ``--cases`` generated inputs (default 100,000) through hypothesis.

Prints cases/s and "0 uncaught exceptions" per target; exits 1 after printing the failing
input (hypothesis' falsifying example and a ``@reproduce_failure`` blob) if any target raised
anything else or returned output that breaks an invariant.

    .venv/bin/python bench/fuzz.py [--cases 100000] [--targets bitso,expr] [--seed N] [--jobs 2]

``--atheris`` runs the four parsers under libFuzzer instead (coverage-guided; ``pip install
atheris``, which has Linux x86-64 wheels for CPython 3.11): the first byte picks the source,
the rest is the response text. libFuzzer prints its own progress and writes a ``crash-*``
file for any failure; ``--cases`` is its ``-runs``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Final

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests/fuzzing.py: the targets and their generators

from tests.fuzzing import (  # noqa: E402
    PARSERS,
    TARGET_NAMES,
    Outcome,
    WireText,
    parse_case,
    run_named,
)

DEFAULT_CASES: Final = 100_000


def run_targets(
    names: Sequence[str],
    cases_wanted: int,
    seed: int | None = None,
    *,
    jobs: int = 1,
    echo: bool = False,
) -> list[Outcome]:
    """Every target in ``names``, ``jobs`` processes at a time; outcomes in ``names`` order."""
    if jobs <= 1:
        outcomes = []
        for name in names:
            outcomes.append(run_named(name, cases_wanted, seed))
            if echo:
                print_outcome(outcomes[-1])
        return outcomes
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_named, name, cases_wanted, seed) for name in names]
        if echo:
            for future in as_completed(futures):
                print_outcome(future.result())
        return [future.result() for future in futures]


def print_outcome(outcome: Outcome) -> None:
    uncaught = 0 if outcome.report is None else 1
    share = outcome.accepted / outcome.cases if outcome.cases else 0.0
    print(
        f"{outcome.name:9s} {outcome.cases:8,d} cases {outcome.seconds:7.1f} s "
        f"{outcome.rate:7,.0f} cases/s  {share:4.0%} accepted  {uncaught} uncaught exceptions",
        flush=True,
    )
    if outcome.report is not None:
        print(shorten(outcome.report), flush=True)


def shorten(report: str, width: int = 400, head: int = 30, tail: int = 40) -> str:
    """The report indented, each line cut to ``width`` (inputs can be 100,000 characters),
    the middle of a long one (a RecursionError's) left out."""
    lines = []
    for line in report.rstrip().split("\n"):
        if len(line) > width:
            line = f"{line[:width]}... ({len(line) - width:,} more characters)"
        lines.append("    " + line)
    if len(lines) > head + tail:
        lines[head:-tail] = [f"    ... {len(lines) - head - tail} lines ..."]
    return "\n".join(lines)


# --------------------------------------------------------------------------- atheris


def atheris_seeds() -> list[bytes]:
    """Valid bodies of each source, prefixed with its selector byte: the starting corpus."""
    bodies = {
        "bitso": '{"success": true, "payload": {"balances": [{"currency": "btc", "total": "1.5",'
        ' "locked": "0.5", "available": "1", "pending_deposit": "0", "pending_withdrawal": "0"}]}}',
        "coinapi": '[{"exchange_id": "KRAKEN", "data": [{"asset_id_exchange": "XBT",'
        ' "asset_id_coinapi": "BTC", "balance": 0.5, "available": 0.5, "locked": 0,'
        ' "rate_usd": 60000.1, "traded": 0.1}]}]',
        "kunacore": '{"data": [{"asset": "USDT", "balance": "10", "holdBalance": "1",'
        ' "lockBalance": "0", "referralBalance": "0.5"}]}',
        "coinw": '{"code": "200", "data": {"BTC": {"available": "1", "onOrders": "0.2"}}}',
    }
    return [bytes([index]) + bodies[name].encode() for index, name in enumerate(PARSERS)]


def atheris_child(runs: int, extra: list[str]) -> None:
    """The libFuzzer process: ``atheris.Fuzz`` never returns, it exits the process."""
    import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]

    atheris.instrument_all()
    sources = list(PARSERS)

    def one_input(data: bytes) -> None:
        if data:
            text = data[1:].decode("utf-8", errors="replace")
            parse_case(sources[data[0] % len(sources)], WireText(text))

    corpus = Path(tempfile.mkdtemp(prefix="balwatch-atheris-"))
    for index, seed in enumerate(atheris_seeds()):
        (corpus / f"seed-{index}").write_bytes(seed)
    argv = [sys.argv[0], f"-runs={runs}", "-max_len=4096", *extra, str(corpus)]
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


def run_atheris(runs: int, extra: list[str]) -> int:
    """libFuzzer in a child process (it exits when done); its log is shown on a failure."""
    try:
        import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore] # noqa: F401
    except ImportError:
        print("atheris is not installed: .venv/bin/pip install atheris", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="balwatch-atheris-") as tmp:
        log = Path(tmp) / "libfuzzer.log"
        command = [sys.executable, __file__, "--atheris-child", "--cases", str(runs), *extra]
        started = time.perf_counter()
        with log.open("w") as out:
            code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=tmp).returncode
        seconds = time.perf_counter() - started
        text = log.read_text(errors="replace")
        done = re.search(r"Done (\d+) runs", text)
        executed = int(done.group(1)) if done else 0
        print(
            f"atheris   {executed:8,d} cases {seconds:7.1f} s {executed / seconds:7,.0f} cases/s  "
            f"{0 if code == 0 else 1} uncaught exceptions (libFuzzer, 4 parsers)",
            flush=True,
        )
        if code != 0:
            crashes = sorted(Path(tmp).glob("crash-*"))
            print(shorten("\n".join(text.splitlines()[-60:])), flush=True)
            for crash in crashes:
                print(f"    reproducer {crash.name}: {crash.read_bytes()[:400]!r}", flush=True)
            return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=DEFAULT_CASES, help="per target")
    parser.add_argument(
        "--targets", default=",".join(TARGET_NAMES), help=f"comma-separated, of {TARGET_NAMES}"
    )
    parser.add_argument("--seed", type=int, help="hypothesis seed, for a repeatable run")
    parser.add_argument("--jobs", type=int, default=1, help="targets run in parallel processes")
    parser.add_argument("--atheris", action="store_true", help="libFuzzer over the parsers")
    parser.add_argument("--atheris-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("libfuzzer", nargs="*", help="extra libFuzzer flags (after --)")
    args = parser.parse_args()
    if args.atheris_child:
        atheris_child(args.cases, args.libfuzzer)
    if args.atheris:
        return run_atheris(args.cases, args.libfuzzer)
    names = [name.strip() for name in args.targets.split(",") if name.strip()]
    unknown = sorted(set(names) - set(TARGET_NAMES))
    if unknown:
        parser.error(f"unknown targets: {', '.join(unknown)}")
    print(f"hypothesis, {args.cases:,} cases per target, {args.jobs} processes", flush=True)
    started = time.perf_counter()
    outcomes = run_targets(names, args.cases, args.seed, jobs=args.jobs, echo=True)
    failed = [o.name for o in outcomes if o.report is not None]
    total = sum(o.cases for o in outcomes)
    elapsed = time.perf_counter() - started
    print(
        f"{total:,} cases in {elapsed:.0f} s, {len(failed)} targets with uncaught exceptions",
        flush=True,
    )
    if failed:
        print(f"FAILED: {', '.join(failed)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
