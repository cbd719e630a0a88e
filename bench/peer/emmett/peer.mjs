// Peer baseline for Chronicle's command benchmark: the same commands on Emmett
// (@event-driven-io/emmett-postgresql), called in-process, from N concurrent workers.
//
// Each command goes through Emmett's `CommandHandler` on the store from
// `getPostgreSQLEventStore`, the way Emmett's samples use them: the handler checks out
// one pooled connection for the command, reads the whole stream and folds it with
// `evolve`, runs the business function, and appends with the version it read
// (`emt_append_to_stream` in its own BEGIN … COMMIT). No inline projections, no retries
// on a version conflict (the default), no snapshots (Emmett has none).
//
// The workload and the report are those of bench/peer/eventsourcing_peer.py. Each
// worker draws from its own seeded generator: 25% open an account, 50% deposit into
// one of the accounts this worker opened (with a reference of its own), 25% request a
// booking of a resource never used before; a worker with no account yet opens one, so
// every operation is one command and stores one event.
//
// Closed loop (no --rate): N workers issue commands back to back; warm-up samples are
// discarded. Open loop (--rate R): commands are due at fixed intended start times, one
// every 1/R s in all; N workers take the next slot, wait for it if early, and latency
// runs from the INTENDED start, so queueing counts. A run so far behind that it would
// overrun the window by max(10 s, 2 × S) abandons the remaining slots and counts those
// of the window as errors.
//
// Node runs the N workers as concurrent async loops on one thread, with a pool of N
// connections. Prints one JSON object on stdout; diagnostics go to stderr.
//
//   node peer.mjs --database-url URL --connections N --seconds S [--warmup W] [--rate R]

import { readFileSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { CommandHandler } from '@event-driven-io/emmett';
import { getPostgreSQLEventStore } from '@event-driven-io/emmett-postgresql';
import pg from 'pg';
import {
  depositFunds,
  evolveAccount,
  evolveBooking,
  initialAccount,
  initialBooking,
  openAccount,
  requestBooking,
} from './domain.mjs';

// The part before the first '-' is the stream type Emmett records.
const handleAccount = CommandHandler({
  evolve: evolveAccount,
  initialState: initialAccount,
  mapToStreamId: (id) => `account-${id}`,
});
const handleBooking = CommandHandler({
  evolve: evolveBooking,
  initialState: initialBooking,
  mapToStreamId: (id) => `booking-${id}`,
});

const DAY_MS = 24 * 3600 * 1000;

class Worker {
  constructor(store, index) {
    Object.assign(this, { store, index, n: 0, accounts: [], samples: [], errors: 0, done: 0, dropped: 0 });
    this.rng = BigInt(0x5eed + index);
  }

  /** xorshift64, as Chronicle's client draws. */
  below(n) {
    let x = this.rng;
    x ^= BigInt.asUintN(64, x << 13n);
    x ^= x >> 7n;
    x ^= BigInt.asUintN(64, x << 17n);
    this.rng = x;
    return Number(x % BigInt(n));
  }

  async next() {
    const draw = this.below(4);
    const tag = `${this.index}-${this.n}`;
    if (draw === 0 || this.accounts.length === 0) {
      const id = randomUUID();
      const command = { owner: `owner-${this.index}`, currency: 'EUR', at: new Date() };
      await handleAccount(this.store, id, (state) => openAccount(command, state));
      this.accounts.push(id);
      return;
    }
    const account = this.accounts[this.below(this.accounts.length)];
    if (draw < 3) {
      const command = { amount: 100 + this.below(10_000), currency: null, reference: `dep-${tag}`, at: new Date() };
      await handleAccount(this.store, account, (state) => depositFunds(command, state));
      return;
    }
    const at = new Date();
    const startsAt = new Date(at.getTime() + 30 * DAY_MS);
    const request = {
      account_id: account,
      resource_id: `emmett-room-${tag}`,
      seats: ['1', '2'],
      starts_at: startsAt,
      ends_at: new Date(startsAt.getTime() + 2 * 3600 * 1000),
      price: { amount: 2_500, currency: 'EUR' },
      guest: { name: 'Zoë Adams', email: 'zoe@example.org' },
      notes: 'bench',
    };
    await handleBooking(this.store, randomUUID(), (state) => requestBooking({ request, at }, state));
  }

  /** Runs the next command; counts it and its latency from `started` (ms) when measured. */
  async runOne(started, measured) {
    this.n += 1;
    try {
      await this.next();
    } catch (error) {
      if (measured) this.errors += 1;
      reportFirstError(error);
      return;
    }
    this.done += 1;
    if (measured) this.samples.push(Math.round((performance.now() - started) * 1000));
  }
}

let firstErrorReported = false;
const reportFirstError = (error) => {
  if (firstErrorReported) return;
  firstErrorReported = true;
  console.error(`emmett peer: first error: ${error?.name}: ${error?.message}`);
};

const sleepUntil = (at) => {
  const wait = at - performance.now();
  return wait > 0 ? new Promise((resolve) => setTimeout(resolve, wait)) : Promise.resolve();
};

const closedLoop = async (workers, plan) => {
  const loop = async (w) => {
    await sleepUntil(plan.begin);
    for (let t0 = performance.now(); t0 < plan.deadline; t0 = performance.now()) {
      await w.runOne(t0, t0 >= plan.windowStart);
    }
  };
  await Promise.all(workers.map(loop));
};

const openLoop = async (workers, plan, rate) => {
  const slots = Math.round((rate * (plan.deadline - plan.begin)) / 1000);
  let nextSlot = 0;
  const loop = async (w) => {
    for (;;) {
      const i = nextSlot++;
      if (i >= slots) return;
      const intended = plan.begin + (i * 1000) / rate;
      const measured = intended >= plan.windowStart;
      if (performance.now() > plan.giveUp) {
        w.errors += measured ? 1 : 0;
        w.dropped += 1;
        continue;
      }
      await sleepUntil(intended);
      await w.runOne(intended, measured);
    }
  };
  await Promise.all(workers.map(loop));
  const dropped = workers.reduce((sum, w) => sum + w.dropped, 0);
  if (dropped > 0) console.error(`emmett peer: rate not sustained: ${dropped} slots never started, counted as errors`);
};

const options = () => {
  const { values } = parseArgs({
    options: {
      'database-url': { type: 'string' },
      connections: { type: 'string' },
      seconds: { type: 'string' },
      warmup: { type: 'string', default: '2' },
      rate: { type: 'string' },
    },
  });
  const args = {
    url: values['database-url'],
    connections: Number(values.connections),
    seconds: Number(values.seconds),
    warmup: Number(values.warmup),
    rate: values.rate === undefined ? null : Number(values.rate),
  };
  if (!args.url || !(args.connections >= 1) || !(args.seconds > 0) || !(args.warmup >= 0) || !(args.rate === null || args.rate > 0))
    throw new Error('--database-url, --connections >= 1, --seconds > 0, --warmup >= 0, --rate > 0');
  return args;
};

// libpq (pgbench, psycopg) and sqlx (Chronicle, esrs) ask for TLS by default
// (sslmode=prefer) and get it from a server with `ssl = on`; node-postgres never asks.
// So that Emmett is spared no cost the others pay, it asks as they do: TLS when the
// server offers it, without verifying the certificate, as `prefer` does.
const preferTls = async (url) => {
  const probe = new pg.Client({ connectionString: url });
  await probe.connect();
  try {
    const { rows } = await probe.query('SHOW ssl');
    return rows[0]?.ssl === 'on' ? { rejectUnauthorized: false } : false;
  } finally {
    await probe.end();
  }
};

const emmettVersion = () => {
  const entry = fileURLToPath(import.meta.resolve('@event-driven-io/emmett-postgresql'));
  const manifest = new URL('../package.json', `file://${entry}`);
  return JSON.parse(readFileSync(manifest, 'utf8')).version;
};

const main = async () => {
  const args = options();
  // node-postgres's pool holds 10 connections unless told otherwise: give it N, as every
  // other system gets.
  const pool = new pg.Pool({ connectionString: args.url, max: args.connections, ssl: await preferTls(args.url) });
  const store = getPostgreSQLEventStore(args.url, { connectionOptions: { pool } });
  await store.schema.migrate();
  // All N connections are opened before the clock starts, as a running service has them
  // (node-postgres opens them on demand).
  const clients = await Promise.all(Array.from({ length: args.connections }, () => pool.connect()));
  clients.forEach((client) => client.release());

  const begin = performance.now() + 50; // let every worker start before the clock does
  const windowStart = begin + args.warmup * 1000;
  const deadline = windowStart + args.seconds * 1000;
  const plan = { begin, windowStart, deadline, giveUp: deadline + Math.max(10_000, 2 * args.seconds * 1000) };
  const workers = Array.from({ length: args.connections }, (_, i) => new Worker(store, i));
  if (args.rate === null) await closedLoop(workers, plan);
  else await openLoop(workers, plan, args.rate);
  const seconds = (performance.now() - windowStart) / 1000;
  await store.close();
  await pool.end();

  const samples = workers.flatMap((w) => w.samples);
  const done = workers.reduce((sum, w) => sum + w.done, 0);
  console.error(`emmett peer: ${done} commands succeeded in all (warm-up included), ${samples.length} in the measured window`);
  process.stdout.write(
    JSON.stringify({
      peer: `emmett-postgresql ${emmettVersion()}`,
      mode: args.rate === null ? 'closed' : 'open',
      connections: args.connections,
      rate: args.rate,
      seconds: Math.round(seconds * 1000) / 1000,
      operations: samples.length,
      errors: workers.reduce((sum, w) => sum + w.errors, 0),
      throughput: seconds > 0 ? Math.round((samples.length / seconds) * 10) / 10 : 0,
      latencies_us: samples,
    }) + '\n',
  );
};

main().catch((error) => {
  console.error(`emmett peer: ${error?.stack ?? error}`);
  process.exit(1);
});
