//! Peer baseline for Chronicle's command benchmark: the same commands on esrs, called
//! in-process on its PostgreSQL store (`PgStore`), from N concurrent workers.
//!
//! Each command goes through esrs's own API the way its README does it:
//! `AggregateManager::load` (one `SELECT` of the stream) for an existing aggregate, then
//! `AggregateManager::handle_command`, whose `PgStore::persist` inserts the events in a
//! transaction of their own. Concurrency is optimistic: the store's unique index on
//! `(aggregate_id, sequence_number)` refuses a second writer. No `lock_and_load`
//! (advisory lock), no snapshots (esrs has none), no event handlers or buses.
//!
//! The workload and the report are those of `bench/peer/eventsourcing_peer.py`: see
//! `load.rs`. One JSON object goes to stdout; diagnostics go to stderr.
//!
//! `chronicle-esrs-peer --database-url URL --connections N --seconds S [--warmup W]
//! [--rate R]`; the database must exist (esrs creates its tables).

mod domain;
mod load;

use std::process::ExitCode;
use std::time::Duration;

use chrono::Utc;
use esrs::AggregateState;
use esrs::manager::AggregateManager;
use esrs::store::postgres::{PgStore, PgStoreBuilder};
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use crate::domain::{Account, AccountCommand, Booking, BookingRequest, RequestBooking};

/// A failed command: refused by the aggregate or not stored.
pub type Failure = Box<dyn std::error::Error + Send + Sync>;

/// The two aggregate managers, sharing one pool.
pub struct Peer {
    accounts: AggregateManager<PgStore<Account>>,
    bookings: AggregateManager<PgStore<Booking>>,
}

impl Peer {
    async fn connect(url: &str, connections: u32) -> Result<Self, Failure> {
        // All N connections are opened before the clock starts, as a running service
        // has them; sqlx's defaults otherwise, as esrs's examples and Chronicle use them.
        let pool = PgPoolOptions::new()
            .max_connections(connections)
            .min_connections(connections)
            .connect(url)
            .await?;
        // `try_build` runs esrs's migrations: one `<name>_events` table per aggregate.
        let accounts = PgStoreBuilder::<Account>::new(pool.clone())
            .try_build()
            .await?;
        let bookings = PgStoreBuilder::<Booking>::new(pool).try_build().await?;
        Ok(Self {
            accounts: AggregateManager::new(accounts),
            bookings: AggregateManager::new(bookings),
        })
    }

    /// Opens an account; its id is the one esrs gives a new aggregate state.
    pub async fn open(&self, owner: String) -> Result<Uuid, Failure> {
        let state = AggregateState::new();
        let id = *state.id();
        let command = AccountCommand::Open {
            owner,
            currency: "EUR".to_owned(),
            at: Utc::now(),
        };
        self.accounts.handle_command(state, command).await??;
        Ok(id)
    }

    pub async fn deposit(
        &self,
        account: Uuid,
        amount: i64,
        reference: String,
    ) -> Result<(), Failure> {
        // An unknown id loads as an empty state, which the aggregate refuses.
        let state = self
            .accounts
            .load(account)
            .await?
            .unwrap_or_else(|| AggregateState::with_id(account));
        let command = AccountCommand::Deposit {
            amount,
            currency: None,
            reference: Some(reference),
            at: Utc::now(),
        };
        self.accounts.handle_command(state, command).await??;
        Ok(())
    }

    pub async fn book(&self, request: BookingRequest) -> Result<(), Failure> {
        let command = RequestBooking {
            request,
            at: Utc::now(),
        };
        self.bookings
            .handle_command(AggregateState::new(), command)
            .await??;
        Ok(())
    }
}

/// Command-line options, named as the Python peer names them.
pub struct Args {
    database_url: String,
    pub connections: u32,
    pub seconds: Duration,
    pub warmup: Duration,
    pub rate: Option<f64>,
}

impl Args {
    fn parse() -> Result<Self, Failure> {
        let (mut url, mut connections, mut seconds, mut warmup, mut rate) =
            (None, None, None, 2.0, None);
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--database-url" => url = Some(value),
                "--connections" => connections = Some(value.parse::<u32>()?),
                "--seconds" => seconds = Some(value.parse::<f64>()?),
                "--warmup" => warmup = value.parse::<f64>()?,
                "--rate" => rate = Some(value.parse::<f64>()?),
                other => return Err(format!("unknown argument {other}").into()),
            }
        }
        let (Some(database_url), Some(connections), Some(seconds)) = (url, connections, seconds)
        else {
            return Err("--database-url, --connections and --seconds are required".into());
        };
        if connections < 1 || seconds <= 0.0 || warmup < 0.0 || rate.is_some_and(|r| r <= 0.0) {
            return Err("--connections >= 1, --seconds > 0, --warmup >= 0, --rate > 0".into());
        }
        Ok(Self {
            database_url,
            connections,
            seconds: Duration::from_secs_f64(seconds),
            warmup: Duration::from_secs_f64(warmup),
            rate,
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("esrs peer: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Failure> {
    let args = Args::parse()?;
    let peer = Peer::connect(&args.database_url, args.connections).await?;
    let report = load::run(peer, &args).await?;
    eprintln!(
        "esrs peer: {} commands succeeded in all (warm-up included), {} in the measured window",
        report.done,
        report.samples.len()
    );
    let seconds = report.seconds;
    let operations = report.samples.len();
    let json = serde_json::json!({
        "peer": format!("esrs {}", env!("ESRS_VERSION")),
        "mode": if args.rate.is_some() { "open" } else { "closed" },
        "connections": args.connections,
        "rate": args.rate,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "operations": operations,
        "errors": report.errors,
        "throughput": if seconds > 0.0 { (operations as f64 / seconds * 10.0).round() / 10.0 } else { 0.0 },
        "latencies_us": report.samples,
    });
    println!("{json}");
    Ok(())
}
