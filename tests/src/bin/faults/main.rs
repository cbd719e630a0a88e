//! The fault-injection suite. Under a bounded load of mixed commands it injects, one at
//! a time: `kill -9` of `chronicle all`; the broker stopped for 10 s; PostgreSQL
//! restarted; only the projector killed; only the relay killed; every message delivered
//! again, newest first; the connection pool exhausted (a session of the suite's holds
//! `events` locked for 15 s while 30 clients send commands, whose answers meanwhile must
//! be prompt 503s with `Retry-After`). After each it restarts or heals what it broke and
//! checks that every acknowledged command is in the event store, that the read models
//! and the search index equal a fresh replay (`chronicle-replay diff`), that no payment
//! was charged twice and that `chronicle-replay verify` passes; faults that promise more
//! (prompt answers) check that too.
//!
//! `scripts/faults.sh` builds what it needs and runs this; `--write docs/faults.md` keeps
//! the table, `--only <Fault>` runs one scenario.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod billing;
mod broker;
mod checks;
mod clock;
mod deployment;
mod disk;
mod erasure;
mod forward;
mod held_lock;
mod jump;
mod load;
mod netns;
mod process;
mod redeliver;
mod scenario;
mod stage;

use std::time::Instant;

use checks::Checked;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    KillAll,
    StopBroker,
    RestartPostgres,
    KillProjector,
    KillRelay,
    DuplicateReorder,
    PoolExhausted,
    PartitionBroker,
    PartitionPostgres,
    BrokerDiskFull,
    SearchDiskFull,
    ClockJump,
    KillBilling,
    KillErasure,
}

impl Fault {
    const ALL: [Fault; 14] = [
        Fault::KillAll,
        Fault::StopBroker,
        Fault::RestartPostgres,
        Fault::KillProjector,
        Fault::KillRelay,
        Fault::DuplicateReorder,
        Fault::PoolExhausted,
        Fault::PartitionBroker,
        Fault::PartitionPostgres,
        Fault::BrokerDiskFull,
        Fault::SearchDiskFull,
        Fault::ClockJump,
        Fault::KillBilling,
        Fault::KillErasure,
    ];

    fn describe(self) -> &'static str {
        match self {
            Self::KillAll => "kill -9 of chronicle all",
            Self::StopBroker => "broker stopped for 10 s",
            Self::RestartPostgres => "PostgreSQL restarted",
            Self::KillProjector => "kill -9 of the projector only",
            Self::KillRelay => "kill -9 of the relay only",
            Self::DuplicateReorder => "every message delivered again, newest first",
            Self::PoolExhausted => {
                "connection pool exhausted: `events` locked by another session for 15 s under 30 clients"
            }
            Self::PartitionBroker => "network partition between Chronicle and the broker for 20 s",
            Self::PartitionPostgres => {
                "network partition between Chronicle and PostgreSQL for 20 s"
            }
            Self::BrokerDiskFull => "the broker's disk full for 20 s",
            Self::SearchDiskFull => "the search index's disk full for 20 s",
            Self::ClockJump => "the clock jumps forward an hour",
            Self::KillBilling => "kill -9 of chronicle all during a subscription billing run",
            Self::KillErasure => "kill -9 of chronicle all during personal-data erasures",
        }
    }

    /// Whether Chronicle runs in a network namespace of its own (see `netns`).
    fn partitions(self) -> bool {
        matches!(self, Self::PartitionBroker | Self::PartitionPostgres)
    }

    /// Whether the roles run as separate processes (so one can be killed alone).
    fn split_roles(self) -> bool {
        matches!(self, Self::KillProjector | Self::KillRelay)
    }
}

pub struct Row {
    fault: Fault,
    note: String,
    acknowledged: usize,
    checked: Checked,
    /// A check of the fault's own that failed (what the fault promised and did not hold).
    own_failure: Option<String>,
}

impl Row {
    fn clean(&self) -> bool {
        let c = &self.checked;
        self.acknowledged > 0
            && c.missing == 0
            && c.read_model_discrepancies == 0
            && c.search_discrepancies == 0
            && c.double_charges == 0
            && c.verified
            && c.recovery.is_some()
            && self.own_failure.is_none()
    }
}

fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| fault | commands acknowledged | events | acknowledged but missing | discrepancies (read models / search) | payments charged twice | verify | recovery |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let fault = if row.note.is_empty() {
            row.fault.describe().to_owned()
        } else {
            format!("{} ({})", row.fault.describe(), row.note)
        };
        let c = &row.checked;
        out.push_str(&format!(
            "| {fault} | {} | {} | {} | {} / {} | {} | {} | {} |\n",
            row.acknowledged,
            c.events,
            c.missing,
            c.read_model_discrepancies,
            c.search_discrepancies,
            c.double_charges,
            if c.verified { "passes" } else { "FAILS" },
            c.recovery
                .map_or("never".to_owned(), |d| format!("{:.1} s", d.as_secs_f64())),
        ));
    }
    out
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let write = args
        .iter()
        .position(|a| a == "--write")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let mut rows = Vec::new();
    for fault in Fault::ALL {
        if only
            .as_deref()
            .is_some_and(|o| !format!("{fault:?}").eq_ignore_ascii_case(o))
        {
            continue;
        }
        eprintln!("fault suite: {} ...", fault.describe());
        let started = Instant::now();
        let row = scenario::scenario(fault).await;
        if let Some(failure) = &row.own_failure {
            eprintln!("  {failure}");
        }
        eprintln!(
            "  {} in {:.0} s",
            if row.clean() { "clean" } else { "NOT CLEAN" },
            started.elapsed().as_secs_f64()
        );
        rows.push(row);
    }
    let report = table(&rows);
    println!("machine: {}", machine());
    println!("{report}");
    if let Some(path) = write {
        let text = format!(
            "# Fault-injection suite\n\nLatest run, {} on {}. Reproduce with `scripts/faults.sh` \
             (writes this file with `--write docs/faults.md`; `--only <Fault>` runs one row).\n\n\
             Under a bounded load of mixed commands (6 clients: accounts, deposits, withdrawals, \
             bookings, cancellations, payments), each fault is injected 3 s in, healed, and the load \
             runs 3 s more. Recovery is the time from healing until the read models hold every \
             acknowledged command. The checks run once the store and the read models have been still \
             for 2 s; a diff that finds something is repeated after settling again (up to three \
             times), since the process manager may append meanwhile, while a read model that went \
             wrong stays wrong.\n\n\
             The rows beyond crashes and restarts, and what their notes report (ADR 0032 says \
             how the suite builds them without touching anything else on the machine):\n\n\
             - **Pool exhausted**: a session of the suite's holds `LOCK TABLE events IN ACCESS \
             EXCLUSIVE MODE` for 15 s while 24 more clients join the load, so every command's \
             statements wait and the commands in flight outnumber the pool's 16 connections. The \
             answers to requests sent meanwhile are counted by status; the row passes only if none \
             hung until the client's 10 s timeout and every failure was a 503 with `Retry-After` \
             (`CHRONICLE_DB_LOCK_TIMEOUT_MS`, ADR 0030).\n             - **Partitions**: Chronicle runs in a network namespace of its own and reaches the \
             broker and PostgreSQL (through a forwarder) over a link each; the link is taken down \
             for 20 s, so whatever Chronicle sends there is dropped silently. The note says how \
             far the relay and the read models came meanwhile and how the requests sent meanwhile \
             were answered. Cut from the broker, every command must still be answered as usual \
             (commands need PostgreSQL only); cut from PostgreSQL, every failure must be a 503 \
             with `Retry-After` or the client's own timeout.\n             - **Full disks**: the broker's storage or the search index lives on a 256 MiB tmpfs \
             of the scenario's own, filled to the last byte by a file for 20 s, then freed. Every \
             command must still be answered as usual.\n             - **Clock jump**: PostgreSQL (a cluster of the scenario's own, under libfaketime) and \
             Chronicle (`CHRONICLE_CLOCK=offset-file:…`) jump an hour forward together while \
             8 recurring payments (every 10 min) run and a burst of 30 bookings is in flight. \
             Every payment must then have exactly the charges due by the moved clock (none twice, \
             none skipped, none failed) and every booking's money must match its fate.\n             - **Kill during billing**: on the same faked clock, 20 weekly subscriptions are              charged their first period, the clock jumps five weeks, and `chronicle all` is              killed with -9 while the five periods each falls due are being charged, then              started again. Every subscription must then have exactly the periods due by the              moved clock charged, each once and in order, and its account debited once per              charge.\n             - **Kill during erasures**: 30 bookings of 30 guests, then each guest's erasure \
             asked in turn, and `chronicle all` killed with -9 once 8 have committed, then started \
             again. Right after the restart no subject may be half erased (a key gone without its \
             `PersonalDataErased` event, or the other way round) and no answered erasure lost; \
             asked again, every guest must be erased exactly once and no read row show a guest \
             (ADR 0035).\n\n{report}",
            chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
            machine()
        );
        // `scripts/overload.sh` keeps its figures in this page between markers: kept.
        let kept = std::fs::read_to_string(&path)
            .ok()
            .and_then(|page| overload_section(&page).map(str::to_owned))
            .map_or(String::new(), |section| format!("\n{section}\n"));
        std::fs::write(&path, format!("{text}{kept}")).expect("write the table");
    }
    let clean = rows.iter().filter(|r| r.clean()).count();
    if clean == rows.len() {
        println!(
            "fault suite ok: {clean} of {} scenarios recovered cleanly",
            rows.len()
        );
    } else {
        println!(
            "fault suite FAILED: {} of {} scenarios did not recover cleanly",
            rows.len() - clean,
            rows.len()
        );
        std::process::exit(1);
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|r| r.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_owned();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    format!("{model}, {cores} cores")
}

/// The overload figures `scripts/overload.sh` put in the page, markers included.
fn overload_section(page: &str) -> Option<&str> {
    const BEGIN: &str = "<!-- overload -->";
    const END: &str = "<!-- /overload -->";
    let start = page.find(BEGIN)?;
    let end = start + page[start..].find(END)? + END.len();
    Some(&page[start..end])
}
