"""Peer baseline: the same booking commands as Chronicle, on Python `eventsourcing`.

What it measures
----------------
The latency of one application command, called in-process on an
`eventsourcing.application.Application` persisted by the library's PostgreSQL
module (`eventsourcing.postgres`: one `<app>_events` table, each save inserting
its events and taking the table's EXCLUSIVE lock to keep notification order).
There is no HTTP, no snapshotting and no aggregate cache: a deposit reads every
event of its account back from PostgreSQL, applies one event and saves it.

Each worker thread draws from its own seeded PRNG, so runs are repeatable:
  25% open an account (AccountOpened),
  50% deposit into one of the accounts this worker opened (FundsDeposited),
  25% request a booking of a resource never used before (BookingRequested).
A worker with no account yet opens one instead of depositing or booking,
so every operation is one command and stores exactly one event.

Closed loop (default): N threads issue commands back to back for S seconds,
after W seconds of warm-up whose samples are discarded.
Open loop (--rate R): commands are scheduled at fixed intended start times,
one every 1/R s in total; N threads take the next slot, sleep until it if early,
and latency runs from the INTENDED start, so queueing delay is counted. A run
that falls so far behind that it would overrun the window by max(10 s, 2*S)
abandons the remaining slots and counts those of the window as errors.

Prints one JSON object on stdout; diagnostics go to stderr.
"""

import argparse
import json
import os
import random
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from importlib.metadata import version
from uuid import UUID

import psycopg
from psycopg import sql
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event


# ---------------------------------------------------------------- domain model
class Account(Aggregate):
    @event("AccountOpened")
    def __init__(self, owner: str, currency: str) -> None:
        self.owner, self.currency, self.balance = owner, currency, 0

    def deposit(self, amount: int, reference: str) -> None:
        if amount <= 0:
            raise ValueError(f"deposit amount must be positive, got {amount}")
        self._deposited(amount=amount, reference=reference,
                        balance_after=self.balance + amount)

    @event("FundsDeposited")
    def _deposited(self, amount: int, reference: str, balance_after: int) -> None:
        self.balance = balance_after


class Booking(Aggregate):
    @event("BookingRequested")
    def __init__(self, account_id: UUID, resource_id: str, seats: list,
                 starts_at: datetime, ends_at: datetime, price_amount: int,
                 currency: str, guest_name: str, guest_email: str, notes: str) -> None:
        self.account_id, self.resource_id, self.seats = account_id, resource_id, seats
        self.starts_at, self.ends_at = starts_at, ends_at
        self.price = (price_amount, currency)
        self.guest, self.notes = (guest_name, guest_email), notes
        self.status = "requested"

    @classmethod
    def request(cls, **fields) -> "Booking":
        if fields["ends_at"] <= fields["starts_at"]:
            raise ValueError("a booking must end after it starts")
        if not fields["seats"]:
            raise ValueError("a booking needs at least one seat")
        return cls(**fields)


class ChronicleApp(Application):
    """Stores its events in the table `chronicleapp_events`."""

    def open_account(self, owner: str, currency: str) -> UUID:
        account = Account(owner, currency)
        self.save(account)
        return account.id

    def deposit(self, account_id: UUID, amount: int, reference: str) -> int:
        account: Account = self.repository.get(account_id)
        account.deposit(amount, reference)
        self.save(account)
        return account.balance

    def request_booking(self, **fields) -> UUID:
        booking = Booking.request(**fields)
        self.save(booking)
        return booking.id


# -------------------------------------------------------------------- workload
class Worker:
    """One thread's operation mix: its PRNG, its accounts and its samples."""

    def __init__(self, app: ChronicleApp, index: int) -> None:
        self.app, self.index = app, index
        self.rng = random.Random(0x5EED + index)
        self.accounts: list[UUID] = []
        self.bookings = 0
        self.samples: list[int] = []  # microseconds, measured window only
        self.errors = 0  # failed commands in the measured window
        self.done = 0  # successful commands, warm-up included
        self.dropped = 0  # open loop: slots abandoned when hopelessly behind

    def next_operation(self):
        """Pick the next command (PRNG draw), returned as a no-argument callable."""
        r, rng = self.rng.random(), self.rng
        if r < 0.25 or not self.accounts:
            return self._open
        account = rng.choice(self.accounts)
        if r < 0.75:
            amount = rng.randint(1, 100_000)
            return lambda: self.app.deposit(account, amount, f"dep-{self.index}")
        self.bookings += 1
        start = datetime(2030, 1, 1, tzinfo=timezone.utc) + timedelta(hours=rng.randint(0, 8760))
        fields = dict(
            account_id=account, resource_id=f"peer-{self.index}-{self.bookings}",
            seats=[f"A{rng.randint(1, 40)}", f"A{rng.randint(41, 80)}"],
            starts_at=start, ends_at=start + timedelta(hours=2),
            price_amount=rng.randint(1_000, 50_000), currency="EUR",
            guest_name="Peer Guest", guest_email="guest@example.com", notes="peer bench")
        return lambda: self.app.request_booking(**fields)

    def _open(self) -> None:
        self.accounts.append(self.app.open_account(f"owner-{self.index}", "EUR"))

    def run_one(self, op, started_ns: int, measured: bool) -> None:
        """Run one command; record latency from `started_ns` if in the window."""
        try:
            op()
        except Exception as exc:  # counted, not fatal
            if measured:
                self.errors += 1
            report_first_error(exc)
            return
        self.done += 1
        if measured:
            self.samples.append((time.perf_counter_ns() - started_ns) // 1000)


_first_error = threading.Lock()  # taken once, never released: only the first prints


def report_first_error(exc: Exception) -> None:
    if _first_error.acquire(blocking=False):
        print(f"peer: first error: {type(exc).__name__}: {exc}", file=sys.stderr)


def closed_loop(workers, warmup_ns: int, seconds_ns: int):
    begin = time.perf_counter_ns()
    window_start, deadline = begin + warmup_ns, begin + warmup_ns + seconds_ns

    def loop(w: Worker) -> None:
        while (t0 := time.perf_counter_ns()) < deadline:
            w.run_one(w.next_operation(), t0, t0 >= window_start)

    return run_threads(workers, loop), window_start


def open_loop(workers, rate: float, warmup_ns: int, seconds_ns: int):
    begin = time.perf_counter_ns() + 50_000_000  # let every thread start first
    window_start = begin + warmup_ns
    slots = int(round(rate * (warmup_ns + seconds_ns) / 1e9))
    give_up = window_start + seconds_ns + max(10 * 10**9, 2 * seconds_ns)
    lock, next_slot = threading.Lock(), [0]

    def loop(w: Worker) -> None:
        while True:
            with lock:
                i = next_slot[0]
                next_slot[0] += 1
            if i >= slots:
                return
            intended = begin + int(i * 1e9 / rate)
            measured = intended >= window_start
            if time.perf_counter_ns() > give_up:  # hopelessly behind: stop draining
                w.errors, w.dropped = w.errors + measured, w.dropped + 1
                continue
            if (early := intended - time.perf_counter_ns()) > 0:
                time.sleep(early / 1e9)
            w.run_one(w.next_operation(), intended, measured)

    finished = run_threads(workers, loop)
    if dropped := sum(w.dropped for w in workers):
        print(f"peer: rate not sustained: {dropped} slots never started, counted as errors",
              file=sys.stderr)
    return finished, window_start


def run_threads(workers, loop) -> int:
    threads = [threading.Thread(target=loop, args=(w,), daemon=True) for w in workers]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return time.perf_counter_ns()


# ------------------------------------------------------------------------ main
def ensure_database(args) -> None:
    with psycopg.connect(dbname="postgres", host=args.host, port=args.port, user=args.user,
                         password=args.password, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                              (args.dbname,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(args.dbname)))
            print(f"peer: created database {args.dbname}", file=sys.stderr)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dbname", required=True)
    p.add_argument("--user", default="postgres")
    p.add_argument("--password", default=os.environ.get("PGPASSWORD", "postgres"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5432)
    p.add_argument("--connections", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--rate", type=float, default=None)
    args = p.parse_args()
    if args.connections < 1 or args.seconds <= 0 or args.warmup < 0 or (
            args.rate is not None and args.rate <= 0):
        p.error("--connections >= 1, --seconds > 0, --warmup >= 0, --rate > 0")

    ensure_database(args)
    app = ChronicleApp(env={
        "PERSISTENCE_MODULE": "eventsourcing.postgres", "CREATE_TABLE": "y",
        "POSTGRES_DBNAME": args.dbname, "POSTGRES_USER": args.user,
        "POSTGRES_HOST": args.host, "POSTGRES_PORT": str(args.port),
        "POSTGRES_PASSWORD": args.password,  # trust auth: any value will do
        # One pooled connection per worker thread, and never more.
        "POSTGRES_POOL_SIZE": str(args.connections), "POSTGRES_MAX_OVERFLOW": "0",
    })
    # All N connections are opened before the clock starts, as in the other peers: the
    # library's pool fills in the background, which on a busy machine outlasts a warm-up.
    app.recorder.datastore.pool.wait(timeout=120.0)
    workers = [Worker(app, i) for i in range(args.connections)]
    warmup_ns, seconds_ns = int(args.warmup * 1e9), int(args.seconds * 1e9)
    if args.rate is None:
        finished, window_start = closed_loop(workers, warmup_ns, seconds_ns)
    else:
        finished, window_start = open_loop(workers, args.rate, warmup_ns, seconds_ns)
    app.close()

    samples = [s for w in workers for s in w.samples]
    print(f"peer: {sum(w.done for w in workers)} commands succeeded in all "
          f"(warm-up included), {len(samples)} in the measured window", file=sys.stderr)
    seconds = (finished - window_start) / 1e9
    print(json.dumps({
        "peer": f"eventsourcing {version('eventsourcing')}",
        "mode": "closed" if args.rate is None else "open",
        "connections": args.connections,
        "rate": args.rate,
        "seconds": round(seconds, 3),
        "operations": len(samples),
        "errors": sum(w.errors for w in workers),
        "throughput": round(len(samples) / seconds, 1) if seconds > 0 else 0.0,
        "latencies_us": samples,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
