"""The state store in PostgreSQL: one database that several daemons (replicas) share.

It holds everything the SQLite store holds, in the same terms (the conformance suite runs
on both), and what replicas need to share the work: their heartbeats, the leases on
accounts with fencing tokens, and who is sending each pending delivery.

Driver
    psycopg 3 (the ``postgres`` extra) with its asyncio connection pool: parameters are
    bound by the server, errors come typed, and the DSN is libpq's own (service files,
    ``sslmode``, ``PG*`` environment variables all work as they do for ``psql``).

Writes
    Commits, flushes, acks and failures queue up while a transaction is being written; the
    next transaction takes all of them at once (group commit, as in SQLite), so a burst of
    alerts costs a few round trips. A transaction commits or fails as a whole, except for a
    write that is :class:`~balwatch.state.base.Fenced`: that one is checked before it
    writes anything, fails alone, and the others in the transaction go on.

Fencing
    A write with a :class:`~balwatch.state.base.Scope` first locks the lease rows of its
    keys ``FOR SHARE`` and checks each is still this instance's, with the same token and
    not expired by the database's clock. A take-over (:meth:`PostgresStateStore.acquire`)
    updates those rows, so it waits for the write's transaction to end: a write is either
    in before the new owner holds the lease, or fenced.

Schema
    Versioned per component in ``balwatch_schema``, every table named ``balwatch_*``, in
    the DSN's current schema (``options=-csearch_path=NAME`` picks another). Migrations run
    at open inside a transaction holding ``pg_advisory_xact_lock``, so replicas starting
    together upgrade once. A schema that holds tables but not ``balwatch_schema`` is not
    ours, and one newer than this balwatch is refused: both leave everything as it was.

Delivery claims
    A pending delivery row carries ``claimed_by`` (an instance) and ``claimed_until`` (the
    database's clock, renewed by :meth:`PostgresStateStore.heartbeat`). Only the claimer
    sends it; a claim that lapsed (its replica died) is taken by the next
    :meth:`~PostgresStateStore.pending`. Per (sink, fingerprint), a replica never claims a
    row while an earlier pending one is another's, so deliveries of one alert go out in
    commit order whichever replicas send them.

Times are the database's (``clock_timestamp()``), never a replica's: their clocks may
disagree. Secrets: the DSN and its password never appear in an error or in
:attr:`~PostgresStateStore.location`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, Literal, TypeVar

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from balwatch import __version__
from balwatch.alert import Alert
from balwatch.config.model import dsn_passwords
from balwatch.rules.engine import AccountState, AlertState
from balwatch.rules.history import HistoryChanges
from balwatch.secret import MASK, Secret
from balwatch.silence import Silence
from balwatch.sink import AlertDoc
from balwatch.state.base import (
    AlertCommit,
    Changes,
    DeadLetter,
    Delivery,
    Fenced,
    Lease,
    NoState,
    OnCommit,
    OutboxEntry,
    Replica,
    Retried,
    RoutedAlert,
    SavedState,
    Scope,
    SinkCounts,
    StateChange,
    StateError,
    StateSnapshot,
    StateStore,
    Unreachable,
    owner_name,
    sort_dead,
)

_T = TypeVar("_T")
Conn = AsyncConnection[tuple[Any, ...]]

# pg_advisory_xact_lock key for migrations: any constant no other program is likely to use
# ("balwatch" in ASCII, as a bigint).
MIGRATION_LOCK: Final = 0x62616C7761746368

# One tuple of statements per schema version; append, never edit a released step.
ENGINE_SCHEMA: Final[tuple[tuple[str, ...], ...]] = (
    (
        # owner: owner_name(state), so a replica's flush replaces only its own.
        """CREATE TABLE balwatch_alert_state (
            fingerprint text NOT NULL, rule text NOT NULL, owner text NOT NULL,
            doc text NOT NULL, PRIMARY KEY (fingerprint, rule))""",
        "CREATE INDEX balwatch_alert_state_by_owner ON balwatch_alert_state (owner)",
        "CREATE TABLE balwatch_account_state (account text PRIMARY KEY, doc text NOT NULL)",
        # account: the series' owner name (an account, or a grouped rule's series name).
        """CREATE TABLE balwatch_sample (
            account text NOT NULL, venue text NOT NULL, asset text NOT NULL,
            metric text NOT NULL, t float8 NOT NULL, value text NOT NULL,
            PRIMARY KEY (account, venue, asset, metric, t))""",
        # Each replica's own firing self-alerts.
        """CREATE TABLE balwatch_self_alert (
            instance text NOT NULL, fingerprint text NOT NULL, doc text NOT NULL,
            PRIMARY KEY (instance, fingerprint))""",
        "CREATE TABLE balwatch_marker (name text PRIMARY KEY, version integer NOT NULL)",
    ),
)
OUTBOX_SCHEMA: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE balwatch_outbox_alert (
            id bigint PRIMARY KEY, doc text NOT NULL, created_at float8 NOT NULL)""",
        "CREATE SEQUENCE balwatch_outbox_alert_id",
        # Ids come from a sequence, which never hands one out twice: id order is enqueue
        # order, per fingerprint too (one replica at a time writes a fingerprint's alerts).
        """CREATE TABLE balwatch_delivery (
            id bigint PRIMARY KEY,
            alert bigint NOT NULL REFERENCES balwatch_outbox_alert (id),
            sink text NOT NULL,
            fingerprint text NOT NULL,
            status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'dead')),
            attempts integer NOT NULL DEFAULT 0,
            last_error text,
            updated_at float8 NOT NULL,
            message text,
            claimed_by text,
            claimed_until timestamptz)""",
        "CREATE SEQUENCE balwatch_delivery_id",
        "CREATE INDEX balwatch_delivery_by_sink ON balwatch_delivery (sink, status, id)",
        """CREATE INDEX balwatch_delivery_by_fingerprint
            ON balwatch_delivery (sink, fingerprint, id) WHERE status = 'pending'""",
        "CREATE INDEX balwatch_delivery_by_alert ON balwatch_delivery (alert)",
        "CREATE INDEX balwatch_delivery_by_claimer ON balwatch_delivery (claimed_by)",
        # The alert goes with its last delivery row, whoever deletes it.
        """CREATE FUNCTION balwatch_prune_alert() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                DELETE FROM balwatch_outbox_alert a WHERE a.id = OLD.alert
                    AND NOT EXISTS (SELECT 1 FROM balwatch_delivery d WHERE d.alert = OLD.alert);
                RETURN NULL;
            END $$""",
        """CREATE TRIGGER balwatch_delivery_prune AFTER DELETE ON balwatch_delivery
            FOR EACH ROW EXECUTE FUNCTION balwatch_prune_alert()""",
    ),
)
ONCALL_SCHEMA: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE balwatch_silence (
            id text PRIMARY KEY, doc text NOT NULL, ends_at float8 NOT NULL,
            created_at float8 NOT NULL)""",
        "CREATE TABLE balwatch_change_counter (name text PRIMARY KEY, value bigint NOT NULL)",
        "INSERT INTO balwatch_change_counter VALUES ('silences', 0), ('outbox', 0)",
    ),
)
CLUSTER_SCHEMA: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE balwatch_replica (
            instance text PRIMARY KEY, started_at timestamptz NOT NULL,
            heartbeat_at timestamptz NOT NULL, version text NOT NULL, address text)""",
        """CREATE TABLE balwatch_lease (
            key text PRIMARY KEY, owner text, token bigint NOT NULL,
            expires_at timestamptz NOT NULL, acquired_at timestamptz NOT NULL)""",
    ),
)
SCHEMAS: Final = (
    ("engine", ENGINE_SCHEMA),
    ("outbox", OUTBOX_SCHEMA),
    ("oncall", ONCALL_SCHEMA),
    ("cluster", CLUSTER_SCHEMA),
)
VERSION_TABLE: Final = "balwatch_schema"

# A write in the next transaction: runs on its connection, returns the caller's result.
_Work = Callable[[Conn], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class ImportedDelivery:
    """A delivery row copied from another store (``balwatch state migrate``), as it was."""

    sink: str
    alert: AlertDoc
    status: Literal["pending", "dead"]
    attempts: int
    error: str | None
    updated_at: float
    message: str | None = None


@dataclass(slots=True, eq=False)  # keyed by identity
class _Write:
    """One caller's part of the next transaction: ``work`` runs on its connection in call
    order; then the alerts of every commit in it (``stored``) go in together, and the
    acknowledged rows (``acks``) are deleted together: a few statements per transaction
    however many callers, since each round trip, not each row, sets the cost."""

    done: asyncio.Future[Any]
    work: _Work | None = None
    stored: list[tuple[RoutedAlert, str]] | None = None  # a commit's: result = its rows
    acks: list[int] = field(default_factory=list)


class PostgresStateStore(StateStore):
    """The state in the PostgreSQL database ``dsn``, as replica ``instance``.

    ``lease_ttl`` is how long a delivery claim lasts unrenewed (:meth:`heartbeat` renews
    them). ``create`` False (the CLI beside a daemon): the tables must exist already.
    ``timeout`` bounds connecting and waiting for a pooled connection.
    """

    def __init__(
        self,
        dsn: Secret,
        *,
        instance: str,
        lease_ttl: float = 8.0,
        create: bool = True,
        pool_size: int = 4,
        timeout: float = 10.0,
    ) -> None:
        self._dsn = dsn
        self.instance = instance
        self.lease_ttl = lease_ttl
        self.create = create
        self._pool_size = pool_size
        self._timeout = timeout
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._queue: list[_Write] = []
        self._writer: asyncio.Task[None] | None = None
        self._claim_asks: list[tuple[list[int], asyncio.Future[set[int]]]] = []
        self._claimer: asyncio.Task[None] | None = None
        self._closed = False
        self._started = False  # the first heartbeat of this run sets started_at
        self._location = _location(dsn.reveal())

    @property
    def location(self) -> str:
        return self._location

    # --- opening and closing -------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            raise RuntimeError(f"{self.location}: already open")
        kwargs = self._connect_kwargs()
        try:
            conn = await AsyncConnection.connect(self._dsn.reveal(), **kwargs)
        except psycopg.Error as exc:
            error = Unreachable if _unreachable(exc) else StateError
            raise error(self._error("cannot connect to PostgreSQL", exc)) from None
        try:
            async with conn:
                await self._migrate(conn)
        except psycopg.Error as exc:
            raise StateError(self._error("cannot use the database", exc)) from None
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            self._dsn.reveal(),
            min_size=1,
            max_size=self._pool_size,
            kwargs=kwargs,
            open=False,
            # A call waits for a connection half a lease at most: past that the replica's
            # leases are in doubt anyway, and the caller (the publisher holding alerts, the
            # ownership loop) decides what to do.
            timeout=min(self._timeout, max(1.0, self.lease_ttl / 2)),
            # A connection the server dropped (a restart) is replaced before it is used.
            check=AsyncConnectionPool.check_connection,
            # The pool retries a lost server with a doubling delay; giving up that attempt
            # soon lets the next call start a new one at once, so the store is back within
            # a second or so of the server, not after a backoff as long as the outage.
            reconnect_timeout=max(1.0, self.lease_ttl / 4),
            name=f"balwatch-{self.instance}",
        )
        try:
            await pool.open(wait=True, timeout=self._timeout)
        except Exception as exc:
            await pool.close()
            raise StateError(self._error("cannot connect to PostgreSQL", exc)) from None
        self._pool = pool

    def _connect_kwargs(self) -> dict[str, Any]:
        """Autocommit (transactions are explicit), and TCP timeouts that notice a database
        gone silent within the lease time, unless the DSN sets its own."""
        kwargs: dict[str, Any] = {"autocommit": True}
        try:
            given = conninfo_to_dict(self._dsn.reveal())
        except psycopg.Error:
            given = {}  # connecting says what is wrong with it
        quarter = max(1, int(self.lease_ttl / 4))
        defaults = {
            "connect_timeout": max(2, int(self._timeout)),
            "keepalives": 1,
            "keepalives_idle": quarter,
            "keepalives_interval": 1,
            "keepalives_count": 3,
            "tcp_user_timeout": int(self.lease_ttl * 1000 / 2),
            "application_name": f"balwatch {self.instance}"[:63],
        }
        kwargs.update({key: value for key, value in defaults.items() if key not in given})
        return kwargs

    async def _migrate(self, conn: Conn) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            schema = (await (await conn.execute("SELECT current_schema()")).fetchone() or [None])[0]
            if schema is None:
                raise StateError(
                    f"{self.location}: no schema to create tables in (the search_path names "
                    "none that exists); create one, or set options=-csearch_path=NAME"
                )
            cur = await conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (schema,),
            )
            tables = {name for (name,) in await cur.fetchall()}
            if VERSION_TABLE not in tables:
                if not self.create:
                    raise NoState(
                        f"{self.location}: no state database here (no balwatch tables in "
                        f"schema {schema}); has `balwatch run` used this database?"
                    )
                if tables:
                    shown = ", ".join(sorted(tables)[:3])
                    raise StateError(
                        f"{self.location}: schema {schema} holds tables of another program "
                        f"({shown}); give balwatch a database or schema of its own "
                        "(options=-csearch_path=NAME in the DSN)"
                    )
                await conn.execute(
                    "CREATE TABLE balwatch_schema "
                    "(component text PRIMARY KEY, version integer NOT NULL)"
                )
            cur = await conn.execute("SELECT component, version FROM balwatch_schema")
            versions: dict[str, int] = dict(await cur.fetchall())
            for component, steps in SCHEMAS:  # all checked before any is upgraded
                current = versions.get(component, 0)
                if current > len(steps):
                    raise StateError(
                        f"{self.location}: {component} tables are at version {current}, newer "
                        f"than this balwatch ({len(steps)}); upgrade balwatch or use another "
                        "database"
                    )
            for component, steps in SCHEMAS:
                current = versions.get(component, 0)
                for step in steps[current:]:
                    for statement in step:
                        await conn.execute(statement)
                if current < len(steps):
                    await conn.execute(
                        "INSERT INTO balwatch_schema VALUES (%s, %s) ON CONFLICT (component) "
                        "DO UPDATE SET version = excluded.version",
                        (component, len(steps)),
                    )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # A transaction in flight is waited for, but not for ever: a frozen server (SIGSTOP,
        # a paused VM) answers nothing while its kernel still acknowledges, so no TCP
        # timeout ends the wait, and the daemon would not stop until the server is back.
        # What was not committed by then is left uncommitted, as when the server is down.
        tasks = [task for task in (self._writer, self._claimer) if task is not None]
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=self._timeout)
            for task in stuck:
                task.cancel()
            if stuck:
                await asyncio.wait(stuck, timeout=1.0)
        if self._pool is not None:
            await self._pool.close(timeout=self._timeout)

    def _error(self, what: str, exc: BaseException) -> str:
        """``location: what (reason)``, the reason on one line and scrubbed of the DSN's
        secrets: libpq quotes a malformed DSN's words back."""
        reason = " ".join(str(exc).split()) or type(exc).__name__
        for secret in sorted(
            (self._dsn.reveal(), *(s.reveal() for s in dsn_passwords(self._dsn.reveal()))),
            key=len,
            reverse=True,
        ):
            reason = reason.replace(secret, MASK)
        return f"{self.location}: {what} ({reason})"

    def _check_open(self) -> AsyncConnectionPool[Conn]:
        if self._closed:
            raise RuntimeError(f"state store {self.location} is closed")
        if self._pool is None:
            raise RuntimeError(f"state store {self.location} is not open")
        return self._pool

    # --- reading the engine's state ------------------------------------------------------

    async def load(self, since: float, scope: Scope | None = None) -> SavedState:
        owners = None if scope is None else list(scope.owners)
        pool = self._check_open()
        saved = SavedState()
        async with pool.connection() as conn, conn.transaction():
            args = {"owners": owners, "since": since}
            for (doc,) in await _all(
                conn,
                "SELECT doc FROM balwatch_alert_state "
                "WHERE %(owners)s::text[] IS NULL OR owner = ANY(%(owners)s::text[])",
                args,
            ):
                saved.alerts.append(AlertState.from_json(json.loads(doc)))
            for (doc,) in await _all(
                conn,
                "SELECT doc FROM balwatch_account_state "
                "WHERE %(owners)s::text[] IS NULL OR account = ANY(%(owners)s::text[])",
                args,
            ):
                saved.accounts.append(AccountState.from_json(json.loads(doc)))
            # Per series, the samples from ``since`` on and the newest one before it (see
            # the SQLite store).
            rows = await _all(
                conn,
                "SELECT account, venue, asset, metric, t, value FROM balwatch_sample AS s "
                "WHERE (%(owners)s::text[] IS NULL OR account = ANY(%(owners)s::text[])) "
                "AND t >= COALESCE((SELECT max(t) FROM balwatch_sample AS o "
                "WHERE o.account = s.account AND o.venue = s.venue AND o.asset = s.asset "
                "AND o.metric = s.metric AND o.t <= %(since)s), %(since)s) "
                "ORDER BY account, venue, asset, metric, t",
                args,
            )
            saved.samples = [((a, v, s, m), t, Decimal(value)) for a, v, s, m, t, value in rows]
            for (doc,) in await _all(
                conn, "SELECT doc FROM balwatch_self_alert WHERE instance = %s", (self.instance,)
            ):
                saved.self_alerts.append(Alert.from_json(json.loads(doc)))
            saved.markers = dict(await _all(conn, "SELECT name, version FROM balwatch_marker"))
        return saved

    # --- writes ------------------------------------------------------------------------

    async def commit(
        self, commit: AlertCommit, *, on_commit: OnCommit | None = None
    ) -> list[Delivery]:
        # Encoded here, on the loop: a document that cannot be encoded fails alone, before
        # anything of this commit is queued.
        stored = [(routed, _encode(routed.alert)) for routed in commit.alerts if routed.sinks]
        changes = _encode_changes(commit.states)
        self_alerts = (
            None
            if commit.self_alerts is None
            else [(a.fingerprint, json.dumps(a.to_json())) for a in commit.self_alerts]
        )
        markers = dict(commit.markers)

        async def work(conn: Conn) -> None:
            await self._fence(conn, commit.scope)
            await self._write_changes(conn, changes, self_alerts, markers)

        done = self._queue_write(work, stored=stored)
        if on_commit is not None:

            def committed(future: asyncio.Future[list[Delivery]]) -> None:
                if not future.cancelled() and future.exception() is None:
                    on_commit(future.result())

            done.add_done_callback(committed)
        result: list[Delivery] = await asyncio.shield(done)
        return result

    async def flush(self, snapshot: StateSnapshot) -> None:
        scope = snapshot.scope
        covered = None if scope is None else [o for o in scope.owners if scope.covers(o)]
        alerts = [
            (s.fingerprint, s.rule, owner_name(s), json.dumps(s.to_json()))
            for s in snapshot.alerts
            if covered is None or owner_name(s) in covered
        ]
        accounts = [
            (a.account, json.dumps(a.to_json()))
            for a in snapshot.accounts
            if covered is None or a.account in covered
        ]
        history = snapshot.history

        async def work(conn: Conn) -> None:
            await self._fence(conn, scope)
            if covered is None:
                await conn.execute("DELETE FROM balwatch_alert_state")
                await conn.execute("DELETE FROM balwatch_account_state")
            else:
                await conn.execute(
                    "DELETE FROM balwatch_alert_state WHERE owner = ANY(%s)", (covered,)
                )
                await conn.execute(
                    "DELETE FROM balwatch_account_state WHERE account = ANY(%s)", (covered,)
                )
            await _upsert_states(conn, alerts)
            if accounts:
                await conn.execute(
                    "INSERT INTO balwatch_account_state SELECT * FROM unnest(%s::text[], "
                    "%s::text[]) ON CONFLICT (account) DO UPDATE SET doc = excluded.doc",
                    _columns(accounts, 2),
                )
            await _apply_history(conn, history)

        await asyncio.shield(self._queue_write(work))

    async def ack_all(self, delivery_ids: Sequence[int]) -> None:
        # A row another replica settled already is gone: nothing to do for it.
        await asyncio.shield(self._queue_write(acks=list(delivery_ids)))

    async def fail_all(self, delivery_ids: Sequence[int], error: str, *, dead: bool) -> None:
        ids = list(delivery_ids)

        async def work(conn: Conn) -> None:
            # Not a row another live replica has claimed since: its attempt is its own.
            await conn.execute(
                "UPDATE balwatch_delivery SET attempts = attempts + 1, last_error = %s, "
                "status = %s, updated_at = extract(epoch from clock_timestamp())::float8 "
                "WHERE id = ANY(%s) AND (claimed_by IS NULL OR claimed_by = %s "
                "OR claimed_until <= clock_timestamp())",
                (error, "dead" if dead else "pending", ids, self.instance),
            )

        await asyncio.shield(self._queue_write(work))

    async def bundle(self, message: str, delivery_ids: Sequence[int]) -> None:
        ids = list(delivery_ids)

        async def work(conn: Conn) -> None:
            await conn.execute(
                "UPDATE balwatch_delivery SET message = %s WHERE id = ANY(%s)", (message, ids)
            )

        await asyncio.shield(self._queue_write(work))

    def _queue_write(
        self,
        work: _Work | None = None,
        *,
        stored: list[tuple[RoutedAlert, str]] | None = None,
        acks: list[int] | None = None,
    ) -> asyncio.Future[Any]:
        """Queue a write for the next transaction (:class:`_Write`); starts the writer if
        idle. The future gets ``work``'s result, or a commit's new deliveries."""
        self._check_open()
        done = asyncio.get_running_loop().create_future()
        self._queue.append(_Write(done, work, stored, acks or []))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_batches(), name="state-commit")
        return done

    async def _write_batches(self) -> None:
        try:
            while self._queue:
                writes, self._queue = self._queue, []
                await self._write(writes)
        finally:
            self._writer = None

    async def _write(self, writes: list[_Write]) -> None:
        """One transaction for ``writes``, in order. A fenced write is checked before it
        writes anything, so it fails alone; any other error fails them all."""
        assert self._pool is not None
        outcomes: list[tuple[_Write, Any, Fenced | None]] = []
        try:
            async with self._pool.connection() as conn, conn.transaction():
                for write in writes:
                    try:
                        result = None if write.work is None else await write.work(conn)
                    except Fenced as exc:
                        outcomes.append((write, None, exc))
                    else:
                        outcomes.append((write, result, None))
                commits = [w for w, _, fenced in outcomes if fenced is None and w.stored]
                deliveries = await self._enqueue(conn, commits)
                acks = [i for write in writes for i in write.acks]
                if acks:
                    await conn.execute("DELETE FROM balwatch_delivery WHERE id = ANY(%s)", (acks,))
        except Exception as error:
            for write in writes:
                write.done.set_exception(error)
            return
        for write, result, fenced in outcomes:
            if fenced is not None:
                write.done.set_exception(fenced)
            elif write.stored is not None:
                write.done.set_result(deliveries.get(write, []))
            else:
                write.done.set_result(result)

    async def _fence(self, conn: Conn, scope: Scope | None) -> None:
        """Fenced unless every lease of ``scope`` is still this instance's, with its token,
        unexpired; the rows stay locked (FOR SHARE) until the transaction ends."""
        if scope is None or not scope.tokens:
            return
        keys = sorted(scope.tokens)
        cur = await conn.execute(
            "SELECT key, owner, token, expires_at > clock_timestamp() FROM balwatch_lease "
            "WHERE key = ANY(%s) ORDER BY key FOR SHARE",
            (keys,),
        )
        found = {key: (owner, token, live) for key, owner, token, live in await cur.fetchall()}
        for key in keys:
            owner, token, live = found.get(key, (None, None, False))
            if owner != self.instance or token != scope.tokens[key]:
                raise Fenced(f"lease {key} is no longer {self.instance}'s")
            if not live:
                raise Fenced(f"lease {key} of {self.instance} expired")

    async def _write_changes(
        self,
        conn: Conn,
        changes: _EncodedChanges,
        self_alerts: list[tuple[str, str]] | None,
        markers: dict[str, int],
    ) -> None:
        upserts, deletes = changes
        await _upsert_states(conn, upserts)
        if deletes:
            await conn.execute(
                "DELETE FROM balwatch_alert_state s USING unnest(%s::text[], %s::text[]) "
                "AS x(fingerprint, rule) WHERE s.fingerprint = x.fingerprint AND s.rule = x.rule",
                _columns(deletes, 2),
            )
        if self_alerts is not None:
            await conn.execute(
                "DELETE FROM balwatch_self_alert WHERE instance = %s", (self.instance,)
            )
            if self_alerts:
                fingerprints, docs = _columns(list(dict(self_alerts).items()), 2)
                await conn.execute(
                    "INSERT INTO balwatch_self_alert SELECT %s, * FROM "
                    "unnest(%s::text[], %s::text[])",
                    (self.instance, fingerprints, docs),
                )
        if markers:
            await conn.execute(
                "INSERT INTO balwatch_marker SELECT * FROM unnest(%s::text[], %s::int[]) "
                "ON CONFLICT (name) DO UPDATE SET version = excluded.version",
                _columns(list(markers.items()), 2),
            )

    async def _enqueue(self, conn: Conn, commits: list[_Write]) -> dict[_Write, list[Delivery]]:
        """Insert the alerts of ``commits`` and their delivery rows, in order; returns per
        commit the rows this instance claimed.

        A row whose (sink, fingerprint) has an earlier pending row that is not this
        instance's goes in unclaimed: whoever sends that one sends this one after it.
        """
        mine: dict[_Write, list[Delivery]] = {write: [] for write in commits}
        stored = [(write, routed, doc) for write in commits for routed, doc in write.stored or ()]
        if not stored:
            return mine
        count = sum(len(routed.sinks) for _, routed, _ in stored)
        pairs = [(sink, routed.fingerprint) for _, routed, _ in stored for sink in routed.sinks]
        cur = await conn.execute(
            "SELECT (SELECT array_agg(nextval('balwatch_outbox_alert_id')) "
            "FROM generate_series(1, %s)), (SELECT array_agg(nextval('balwatch_delivery_id')) "
            "FROM generate_series(1, %s)), (SELECT array_agg(DISTINCT d.sink || '/' || "
            "d.fingerprint) FROM balwatch_delivery d "
            "JOIN unnest(%s::text[], %s::text[]) AS x(sink, fingerprint) "
            "ON d.sink = x.sink AND d.fingerprint = x.fingerprint "
            "WHERE d.status = 'pending' AND d.claimed_by IS DISTINCT FROM %s)",
            (len(stored), count, *_columns(pairs, 2), self.instance),
        )
        row = await cur.fetchone()
        assert row is not None
        alert_ids, delivery_ids = sorted(row[0]), iter(sorted(row[1]))
        # sink/fingerprint: a sink name has no '/' (config names), so the pair is unambiguous
        blocked = set(row[2] or ())
        alerts: list[tuple[int, str]] = []
        rows: list[tuple[int, int, str, str, bool]] = []
        for alert_id, (write, routed, doc) in zip(alert_ids, stored, strict=True):
            alerts.append((alert_id, doc))
            for sink in routed.sinks:
                delivery_id = next(delivery_ids)
                claimed = f"{sink}/{routed.fingerprint}" not in blocked
                rows.append((delivery_id, alert_id, sink, routed.fingerprint, claimed))
                if claimed:
                    delivery = Delivery(delivery_id, sink, routed.fingerprint, routed.alert)
                    mine[write].append(delivery)
        # One statement: the delivery rows' foreign keys are checked at its end.
        await conn.execute(
            "WITH alerts AS (INSERT INTO balwatch_outbox_alert SELECT *, "
            "extract(epoch from clock_timestamp())::float8 FROM unnest(%s::bigint[], %s::text[])) "
            "INSERT INTO balwatch_delivery (id, alert, sink, fingerprint, updated_at, "
            "claimed_by, claimed_until) SELECT x.id, x.alert, x.sink, x.fingerprint, "
            "extract(epoch from clock_timestamp())::float8, CASE WHEN x.claimed THEN %s END, "
            "CASE WHEN x.claimed THEN clock_timestamp() + %s * interval '1 second' END "
            "FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::text[], %s::bool[]) "
            "AS x(id, alert, sink, fingerprint, claimed)",
            (*_columns(alerts, 2), self.instance, self.lease_ttl, *_columns(rows, 5)),
        )
        return mine

    async def import_outbox(self, rows: Sequence[ImportedDelivery]) -> int:
        """Add delivery rows copied from another store, in their order (new ids, in that
        order), each alert document once, unclaimed; returns how many. One transaction."""
        docs = list(dict.fromkeys(_encode(row.alert) for row in rows))

        async def work(conn: Conn) -> int:
            if not rows:
                return 0
            alert_ids = dict(
                zip(docs, await _reserve(conn, "balwatch_outbox_alert_id", len(docs)), strict=True)
            )
            delivery_ids = await _reserve(conn, "balwatch_delivery_id", len(rows))
            await conn.execute(
                "INSERT INTO balwatch_outbox_alert SELECT *, extract(epoch from "
                "clock_timestamp())::float8 FROM unnest(%s::bigint[], %s::text[])",
                ([alert_ids[doc] for doc in docs], list(docs)),
            )
            await conn.execute(
                "INSERT INTO balwatch_delivery (id, alert, sink, fingerprint, status, attempts, "
                "last_error, updated_at, message) SELECT * FROM unnest(%s::bigint[], "
                "%s::bigint[], %s::text[], %s::text[], %s::text[], %s::int[], %s::text[], "
                "%s::float8[], %s::text[])",
                _columns(
                    [
                        (
                            delivery_id, alert_ids[_encode(row.alert)], row.sink,
                            row.alert["fingerprint"], row.status, row.attempts, row.error,
                            row.updated_at, row.message,
                        )
                        for delivery_id, row in zip(delivery_ids, rows, strict=True)
                    ],
                    9,
                ),
            )  # fmt: skip
            return len(rows)

        count: int = await asyncio.shield(self._queue_write(work))
        return count

    # --- outbox reads ------------------------------------------------------------------

    async def pending(self, sink: str) -> list[Delivery]:
        """Claims and returns the sink's pending rows this instance may send, in id order:
        its own, unclaimed ones, and those whose claim lapsed; never one behind an earlier
        row of its fingerprint that another replica holds, and a group message's rows only
        all together. Rows another transaction is claiming right now are skipped."""
        pool = self._check_open()
        async with pool.connection() as conn, conn.transaction():
            every = await _all(
                conn,
                "SELECT id, fingerprint, message FROM balwatch_delivery "
                "WHERE sink = %s AND status = 'pending' ORDER BY id",
                (sink,),
            )
            cur = await conn.execute(
                "SELECT id FROM balwatch_delivery WHERE sink = %s AND status = 'pending' "
                "AND (claimed_by IS NULL OR claimed_by = %s OR claimed_until <= clock_timestamp()) "
                "ORDER BY id FOR UPDATE SKIP LOCKED",
                (sink, self.instance),
            )
            takeable = {delivery_id for (delivery_id,) in await cur.fetchall()}
            ids = _sendable(every, takeable)
            await conn.execute(
                "UPDATE balwatch_delivery SET claimed_by = %s, "
                "claimed_until = clock_timestamp() + %s * interval '1 second' "
                "WHERE id = ANY(%s) AND (claimed_by IS DISTINCT FROM %s "
                "OR claimed_until <= clock_timestamp())",
                (self.instance, self.lease_ttl, ids, self.instance),
            )
            rows = await _all(
                conn,
                "SELECT d.id, d.fingerprint, d.attempts, d.message, a.doc "
                "FROM balwatch_delivery d JOIN balwatch_outbox_alert a ON a.id = d.alert "
                "WHERE d.id = ANY(%s) ORDER BY d.id",
                (ids,),
            )
        return [
            Delivery(i, sink, fingerprint, json.loads(doc), attempts, message=message)
            for i, fingerprint, attempts, message, doc in rows
        ]

    async def claimed(self, delivery_ids: Sequence[int]) -> list[int]:
        """Renews the claims still this instance's and returns their ids. Asked before every
        send: the asks that come while one is being answered are answered together."""
        self._check_open()
        done: asyncio.Future[set[int]] = asyncio.get_running_loop().create_future()
        self._claim_asks.append((list(delivery_ids), done))
        if self._claimer is None:
            self._claimer = asyncio.create_task(self._confirm_claims(), name="state-claims")
        still = await asyncio.shield(done)
        return [delivery_id for delivery_id in delivery_ids if delivery_id in still]

    async def _confirm_claims(self) -> None:
        assert self._pool is not None
        try:
            while self._claim_asks:
                asks, self._claim_asks = self._claim_asks, []
                ids = [delivery_id for wanted, _ in asks for delivery_id in wanted]
                try:
                    async with self._pool.connection() as conn, conn.transaction():
                        await _not_durable(conn)
                        cur = await conn.execute(
                            "UPDATE balwatch_delivery "
                            "SET claimed_until = clock_timestamp() + %s * interval '1 second' "
                            "WHERE id = ANY(%s) AND status = 'pending' AND claimed_by = %s "
                            "RETURNING id",
                            (self.lease_ttl, ids, self.instance),
                        )
                        still = {delivery_id for (delivery_id,) in await cur.fetchall()}
                except Exception as error:
                    for _, done in asks:
                        done.set_exception(error)
                else:
                    for _, done in asks:
                        done.set_result(still)
        finally:
            self._claimer = None

    async def dead_letters(self, sink: str | None = None) -> list[DeadLetter]:
        rows = await self._query(
            "SELECT d.id, d.sink, d.attempts, d.last_error, d.updated_at, a.doc "
            "FROM balwatch_delivery d JOIN balwatch_outbox_alert a ON a.id = d.alert "
            "WHERE d.status = 'dead' AND (%(sink)s::text IS NULL OR d.sink = %(sink)s) "
            "ORDER BY d.id",
            {"sink": sink},
        )
        return [
            DeadLetter(i, name, json.loads(doc), attempts, error, failed_at)
            for i, name, attempts, error, failed_at, doc in rows
        ]

    async def documents(self) -> list[AlertDoc]:
        rows = await self._query("SELECT doc FROM balwatch_outbox_alert ORDER BY id")
        return [json.loads(doc) for (doc,) in rows]

    async def counts(self) -> dict[str, SinkCounts]:
        rows = await self._query(
            "SELECT sink, status, count(*) FROM balwatch_delivery GROUP BY sink, status"
        )
        found: dict[str, dict[str, int]] = {}
        for sink, status, count in rows:
            found.setdefault(sink, {})[status] = count
        return {sink: SinkCounts(**by_status) for sink, by_status in found.items()}

    async def outbox(self, *, dead_only: bool = False) -> list[OutboxEntry]:
        rows = await self._query(
            "SELECT d.id, d.sink, d.status, d.attempts, d.last_error, d.updated_at, a.doc "
            "FROM balwatch_delivery d JOIN balwatch_outbox_alert a ON a.id = d.alert "
            "WHERE NOT %s OR d.status = 'dead' ORDER BY d.id",
            (dead_only,),
        )
        return [
            OutboxEntry(i, sink, status, attempts, error, updated, json.loads(doc))
            for i, sink, status, attempts, error, updated, doc in rows
        ]

    # --- by hand: dead letters and silences (each in a transaction of its own) ----------

    async def retry_dead(self, ids: Sequence[int] | None = None) -> Retried:
        wanted_ids = None if ids is None else list(dict.fromkeys(ids))

        async def work(conn: Conn) -> Retried:
            rows = await _all(
                conn,
                "SELECT d.id, a.doc FROM balwatch_delivery d JOIN balwatch_outbox_alert a "
                "ON a.id = d.alert WHERE d.status = 'dead' ORDER BY d.id FOR UPDATE OF d",
            )
            dead = {delivery_id: json.loads(doc) for delivery_id, doc in rows}
            wanted = list(dead) if wanted_ids is None else wanted_ids
            firing = {
                fingerprint
                for (fingerprint,) in await _all(
                    conn,
                    "SELECT fingerprint FROM balwatch_alert_state "
                    "WHERE doc::jsonb ->> 'phase' = 'firing' "
                    "UNION SELECT fingerprint FROM balwatch_self_alert",
                )
            }
            retried = sort_dead(wanted, dead, firing)
            if retried.retried:
                # Unclaimed: the next replica to read the outbox takes it.
                await conn.execute(
                    "UPDATE balwatch_delivery SET status = 'pending', attempts = 0, "
                    "message = NULL, claimed_by = NULL, claimed_until = NULL, "
                    "updated_at = extract(epoch from clock_timestamp())::float8 WHERE id = ANY(%s)",
                    (retried.retried,),
                )
                await _bump(conn, "outbox")
            return retried

        return await self._transact(work)

    async def drop_dead(self, ids: Sequence[int]) -> list[int]:
        wanted = list(dict.fromkeys(ids))

        async def work(conn: Conn) -> list[int]:
            gone = {
                delivery_id
                for (delivery_id,) in await _all(
                    conn,
                    "DELETE FROM balwatch_delivery WHERE id = ANY(%s) AND status = 'dead' "
                    "RETURNING id",
                    (wanted,),
                )
            }
            if gone:
                await _bump(conn, "outbox")
            return [delivery_id for delivery_id in wanted if delivery_id in gone]

        return await self._transact(work)

    async def add_silence(self, silence: Silence) -> None:
        async def work(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO balwatch_silence VALUES (%s, %s, %s, %s)",
                (silence.id, json.dumps(silence.to_record()), silence.ends_at, silence.created_at),
            )
            await _bump(conn, "silences")

        await self._transact(work)

    async def expire_silence(self, silence_id: str, now: float) -> Silence | None:
        async def work(conn: Conn) -> Silence | None:
            rows = await _all(
                conn, "SELECT doc FROM balwatch_silence WHERE id = %s FOR UPDATE", (silence_id,)
            )
            if not rows:
                return None
            stored = Silence.from_record(json.loads(rows[0][0]))
            ended = stored.expired(now)
            if ended is not stored:
                await conn.execute(
                    "UPDATE balwatch_silence SET doc = %s, ends_at = %s WHERE id = %s",
                    (json.dumps(ended.to_record()), ended.ends_at, silence_id),
                )
                await _bump(conn, "silences")
            return ended

        return await self._transact(work)

    async def silences(self) -> list[Silence]:
        rows = await self._query("SELECT doc FROM balwatch_silence ORDER BY created_at, id")
        return [Silence.from_record(json.loads(doc)) for (doc,) in rows]

    async def prune_silences(self, ended_before: float) -> int:
        async def work(conn: Conn) -> int:
            cur = await conn.execute(
                "DELETE FROM balwatch_silence WHERE ends_at < %s", (ended_before,)
            )
            if cur.rowcount:
                await _bump(conn, "silences")
            return cur.rowcount

        return await self._transact(work)

    async def changes(self) -> Changes:
        counters = dict(await self._query("SELECT name, value FROM balwatch_change_counter"))
        return Changes(silences=counters["silences"], outbox=counters["outbox"])

    # --- replicas and leases (balwatch.cluster) ------------------------------------------

    async def heartbeat(self, address: str | None) -> None:
        """Record this replica as alive now, and renew the claims on its pending deliveries.

        The first heartbeat of this store also sets ``started_at``."""
        first = not self._started

        async def work(conn: Conn) -> None:
            await _not_durable(conn)
            await conn.execute(
                "INSERT INTO balwatch_replica "
                "VALUES (%s, clock_timestamp(), clock_timestamp(), %s, %s) "
                "ON CONFLICT (instance) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, "
                "version = excluded.version, address = excluded.address, started_at = "
                "CASE WHEN %s THEN excluded.started_at ELSE balwatch_replica.started_at END",
                (self.instance, __version__, address, first),
            )
            await conn.execute(
                "UPDATE balwatch_delivery "
                "SET claimed_until = clock_timestamp() + %s * interval '1 second' "
                "WHERE claimed_by = %s AND status = 'pending'",
                (self.lease_ttl, self.instance),
            )

        await self._transact(work)
        self._started = True

    async def replicas(self) -> list[Replica]:
        """Every replica that sent a heartbeat and was not forgotten, by instance name."""
        rows = await self._query(
            "SELECT instance, extract(epoch from started_at)::float8, "
            "extract(epoch from heartbeat_at)::float8, version, address, "
            "extract(epoch from clock_timestamp() - heartbeat_at)::float8 "
            "FROM balwatch_replica ORDER BY instance"
        )
        return [Replica(*row) for row in rows]

    async def forget_replica(self, instance: str) -> None:
        """Remove a replica's row (on a clean shutdown: it is not dead, it is gone)."""

        async def work(conn: Conn) -> None:
            await conn.execute("DELETE FROM balwatch_replica WHERE instance = %s", (instance,))

        await self._transact(work)

    async def leases(self) -> list[Lease]:
        """Every lease there is, held, expired or released, by key."""
        return await self._leases(
            "SELECT key, owner, token, expires_at, acquired_at, clock_timestamp() "
            "FROM balwatch_lease ORDER BY key"
        )

    async def acquire(self, keys: Iterable[str], ttl: float) -> list[Lease]:
        """Take each key that is free (released or expired) or ours, for ``ttl`` seconds;
        returns the leases now ours. The token grows when the owner changes; a lease of
        ours is renewed, its token kept. Waits for writes fenced by the old token."""
        return await self._leases(
            "INSERT INTO balwatch_lease AS l (key, owner, token, expires_at, acquired_at) "
            "SELECT key, %(me)s, 1, clock_timestamp() + %(ttl)s * interval '1 second', "
            "clock_timestamp() "
            "FROM unnest(%(keys)s::text[]) AS key "
            "ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, "
            "token = CASE WHEN l.owner IS NOT DISTINCT FROM excluded.owner THEN l.token "
            "ELSE l.token + 1 END, expires_at = excluded.expires_at, "
            "acquired_at = CASE WHEN l.owner IS NOT DISTINCT FROM excluded.owner "
            "THEN l.acquired_at ELSE excluded.acquired_at END "
            "WHERE l.owner IS NULL OR l.owner = excluded.owner "
            "OR l.expires_at <= clock_timestamp() "
            "RETURNING key, owner, token, expires_at, acquired_at, clock_timestamp()",
            {"me": self.instance, "ttl": ttl, "keys": sorted(set(keys))},
        )

    async def renew(self, keys: Iterable[str], ttl: float) -> list[Lease]:
        """Extend the leases of ``keys`` still ours and unexpired by ``ttl`` seconds from
        now; returns them. A key missing from the result is lost."""
        return await self._leases(
            "UPDATE balwatch_lease "
            "SET expires_at = clock_timestamp() + %(ttl)s * interval '1 second' "
            "WHERE key = ANY(%(keys)s) AND owner = %(me)s AND expires_at > clock_timestamp() "
            "RETURNING key, owner, token, expires_at, acquired_at, clock_timestamp()",
            {"me": self.instance, "ttl": ttl, "keys": sorted(set(keys))},
        )

    async def release(self, keys: Iterable[str]) -> None:
        """Let go of these leases of ours now (the token is kept: the next owner bumps it)."""
        await self._leases(
            "UPDATE balwatch_lease SET owner = NULL, expires_at = clock_timestamp() "
            "WHERE key = ANY(%(keys)s) AND owner = %(me)s "
            "RETURNING key, owner, token, expires_at, acquired_at, clock_timestamp()",
            {"me": self.instance, "keys": sorted(set(keys))},
        )

    async def _leases(self, query: str, args: dict[str, Any] | None = None) -> list[Lease]:
        async def work(conn: Conn) -> list[Lease]:
            return [
                Lease(key, owner, token, expires.timestamp(), acquired.timestamp(),
                      (expires - now).total_seconds())
                for key, owner, token, expires, acquired, now in await _all(conn, query, args)
            ]  # fmt: skip

        leases = await self._transact(work)
        return sorted(leases, key=lambda lease: lease.key)

    # --- plumbing ----------------------------------------------------------------------

    async def _transact(self, work: Callable[[Conn], Awaitable[_T]]) -> _T:
        """``work(connection)`` in a transaction of its own."""
        pool = self._check_open()
        async with pool.connection() as conn, conn.transaction():
            return await work(conn)

    async def _query(self, query: str, args: Any = None) -> list[tuple[Any, ...]]:
        pool = self._check_open()
        async with pool.connection() as conn:
            return await _all(conn, query, args)


# (upserts: (fingerprint, rule, owner, doc), deletes: (fingerprint, rule))
_EncodedChanges = tuple[list[tuple[str, str, str, str]], list[tuple[str, str]]]


def _encode(alert: AlertDoc) -> str:
    return json.dumps(alert, ensure_ascii=False, separators=(",", ":"))


def _encode_changes(changes: Sequence[StateChange]) -> _EncodedChanges:
    """A commit's state changes as rows, the last change of a (fingerprint, rule) winning
    (one statement may not touch a row twice)."""
    latest: dict[tuple[str, str], AlertState | None] = {}
    for fingerprint, rule, state in changes:
        latest[fingerprint, rule] = state
    upserts = [
        (fp, rule, owner_name(s), json.dumps(s.to_json()))
        for (fp, rule), s in latest.items()
        if s is not None
    ]
    deletes = [key for key, s in latest.items() if s is None]
    return upserts, deletes


def _columns(rows: Sequence[Sequence[Any]], width: int) -> tuple[list[Any], ...]:
    """Rows as one list per column: arrays for ``unnest``, one statement for any count."""
    return tuple([row[i] for row in rows] for i in range(width))


async def _all(conn: Conn, query: str, args: Any = None) -> list[tuple[Any, ...]]:
    cur = await conn.execute(query, args)
    return await cur.fetchall() if cur.description is not None else []


async def _reserve(conn: Conn, sequence: str, count: int) -> list[int]:
    """``count`` new ids from ``sequence``, ascending."""
    cur = await conn.execute(
        sql.SQL("SELECT nextval({}) FROM generate_series(1, %s)").format(sql.Literal(sequence)),
        (count,),
    )
    return sorted(value for (value,) in await cur.fetchall())


async def _not_durable(conn: Conn) -> None:
    """This transaction need not wait for the disk: a claim renewal or heartbeat lost to a
    server crash is renewed by the next one (and a durable commit after it flushes it)."""
    await conn.execute("SET LOCAL synchronous_commit TO off")


async def _bump(conn: Conn, counter: str) -> None:
    await conn.execute(
        "UPDATE balwatch_change_counter SET value = value + 1 WHERE name = %s", (counter,)
    )


async def _upsert_states(conn: Conn, rows: list[tuple[str, str, str, str]]) -> None:
    if rows:
        await conn.execute(
            "INSERT INTO balwatch_alert_state SELECT * FROM "
            "unnest(%s::text[], %s::text[], %s::text[], %s::text[]) ON CONFLICT "
            "(fingerprint, rule) DO UPDATE SET owner = excluded.owner, doc = excluded.doc",
            _columns(rows, 4),
        )


async def _apply_history(conn: Conn, history: HistoryChanges) -> None:
    if history.forgotten:
        await conn.execute(
            "DELETE FROM balwatch_sample s USING unnest(%s::text[], %s::text[], %s::text[], "
            "%s::text[]) AS x(account, venue, asset, metric) WHERE s.account = x.account "
            "AND s.venue = x.venue AND s.asset = x.asset AND s.metric = x.metric",
            _columns(history.forgotten, 4),
        )
    if history.trimmed:
        await conn.execute(
            "DELETE FROM balwatch_sample s USING unnest(%s::text[], %s::text[], %s::text[], "
            "%s::text[], %s::float8[]) AS x(account, venue, asset, metric, t) "
            "WHERE s.account = x.account AND s.venue = x.venue AND s.asset = x.asset "
            "AND s.metric = x.metric AND s.t < x.t",
            _columns([(*key, t) for key, t in history.trimmed], 5),
        )
    if history.samples:
        latest = {(*key, t): str(value) for key, t, value in history.samples}
        await conn.execute(
            "INSERT INTO balwatch_sample SELECT * FROM unnest(%s::text[], %s::text[], "
            "%s::text[], %s::text[], %s::float8[], %s::text[]) ON CONFLICT "
            "(account, venue, asset, metric, t) DO UPDATE SET value = excluded.value",
            _columns([(*key, value) for key, value in latest.items()], 6),
        )


def _sendable(every: list[tuple[Any, ...]], takeable: set[int]) -> list[int]:
    """Of a sink's pending rows ``every`` (id, fingerprint, message; id order), those this
    replica may claim: takeable, with no earlier row of their fingerprint left behind, and
    each group message whole."""
    ok = set(takeable)
    while True:
        blocked: set[str] = set()
        for delivery_id, fingerprint, _ in every:
            if delivery_id not in ok or fingerprint in blocked:
                ok.discard(delivery_id)
                blocked.add(fingerprint)
        partial = {message for i, _, message in every if message is not None and i not in ok}
        cut = {i for i, _, message in every if message in partial and i in ok}
        if not cut:
            return [delivery_id for delivery_id, _, _ in every if delivery_id in ok]
        ok -= cut


def _unreachable(exc: psycopg.Error) -> bool:
    """Whether a failed connect is worth trying again. libpq gives no SQLSTATE for a failed
    connection: a server that answered says FATAL (a password, role or database refused,
    which waiting does not fix), unless it is starting, stopping or full."""
    text = str(exc)
    return "FATAL:" not in text or any(
        phrase in text
        for phrase in ("is starting up", "is shutting down", "in recovery mode", "too many")
    )


def _location(dsn: str) -> str:
    """``postgresql://user@host:port/dbname`` of a DSN, as far as it says: never the
    password or any other option."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "PostgreSQL (malformed DSN)"
    user = f"{parts['user']}@" if parts.get("user") else ""
    host = str(parts.get("host") or parts.get("hostaddr") or "")
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{host}{port}/{parts.get('dbname') or ''}"
