//! What one scenario runs on: its database, broker, Chronicle, scratch directory and
//! whatever rig its fault needs (a network namespace, small disks, a faked clock).
//! Dropped in field order, processes first, so everything is stopped and taken down at
//! the scenario's end, also when it panics.

use std::path::PathBuf;

use chronicle_tests::TestDb;
use uuid::Uuid;

use crate::Fault;
use crate::broker::Broker;
use crate::clock::{FakedClock, OwnPostgres};
use crate::deployment::{Deployment, Placement};
use crate::disk::SmallDisk;
use crate::forward::Forwarder;
use crate::netns::Namespace;
use crate::process::Launcher;

/// The size of the small disks of the disk-full rows: room for a scenario's data.
const SMALL_DISK_MB: u32 = 256;

/// What a fault needs besides the usual stage.
#[derive(Default)]
pub struct Rig {
    /// Chronicle runs inside it; the links are `http` (the load), `pg` and `kafka`.
    pub namespace: Option<Namespace>,
    /// PostgreSQL seen from inside the namespace.
    pub forwarder: Option<Forwarder>,
    pub broker_disk: Option<SmallDisk>,
    pub search_disk: Option<SmallDisk>,
    pub clock: Option<FakedClock>,
    /// Dropped last: the test database on it is dropped with the cluster.
    pub postgres: Option<OwnPostgres>,
}

pub struct Stage {
    pub deployment: Deployment,
    pub broker: Broker,
    pub rig: Rig,
    pub pool: sqlx::PgPool,
    pub db: TestDb,
    pub scratch: PathBuf,
    pub search: PathBuf,
}

/// `url` with its `host:port` replaced by `addr`.
fn through(url: &str, addr: std::net::SocketAddr) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[after_scheme..];
    let host_start = rest.find('@').map_or(0, |i| i + 1);
    let host_end = rest.find('/').unwrap_or(rest.len());
    format!(
        "{}{}{addr}{}",
        &url[..after_scheme],
        &rest[..host_start],
        &rest[host_end..]
    )
}

impl Stage {
    pub async fn new(fault: Fault) -> Self {
        let scratch =
            std::env::temp_dir().join(format!("chronicle-faults-{}", Uuid::new_v4().simple()));
        let data = scratch.join("data");
        let search = data.join("search");
        let mut rig = Rig::default();
        if matches!(fault, Fault::ClockJump | Fault::KillBilling) {
            let clock = FakedClock::new(&scratch);
            rig.postgres = Some(OwnPostgres::start(&scratch.join("postgres"), &clock).await);
            rig.clock = Some(clock);
        }
        let db = match &rig.postgres {
            Some(postgres) => TestDb::create_on(&postgres.admin_url()).await,
            None => TestDb::create().await,
        };
        let pool = db.pool(4).await;
        let mut database_url = db.url();
        let mut broker_host = "127.0.0.1".to_owned();
        let mut http_host = "127.0.0.1".to_owned();
        if fault.partitions() {
            let namespace = Namespace::create(&["http", "pg", "kafka"]);
            let admin = chronicle_tests::admin_options();
            let forwarder = Forwarder::start(
                namespace.link("pg").outer_addr,
                format!("{}:{}", admin.get_host(), admin.get_port()),
            )
            .await;
            database_url = through(&database_url, forwarder.addr);
            broker_host = namespace.link("kafka").outer_addr.to_string();
            http_host = namespace.link("http").inner_addr.to_string();
            rig.forwarder = Some(forwarder);
            rig.namespace = Some(namespace);
        }
        let broker_dir = scratch.join("broker");
        if fault == Fault::BrokerDiskFull {
            rig.broker_disk = Some(SmallDisk::mount(&broker_dir, SMALL_DISK_MB));
        }
        if fault == Fault::SearchDiskFull {
            rig.search_disk = Some(SmallDisk::mount(&search, SMALL_DISK_MB));
        }
        let broker = Broker::start(
            &broker_host,
            broker_dir,
            scratch.join("tansu.log"),
            Launcher::default(),
        )
        .await;
        let launcher = Launcher {
            prefix: rig
                .namespace
                .as_ref()
                .map(Namespace::exec_prefix)
                .unwrap_or_default(),
            env: Vec::new(),
        };
        let mut deployment = Deployment::new(Placement {
            database_url,
            brokers: broker.addr.clone(),
            http_host,
            data,
            search: search.clone(),
            launcher,
            env: rig
                .clock
                .as_ref()
                .map(FakedClock::chronicle_env)
                .unwrap_or_default(),
        });
        deployment.start(fault.split_roles()).await;
        Self {
            deployment,
            broker,
            rig,
            pool,
            db,
            scratch,
            search,
        }
    }

    /// Stops Chronicle and the broker.
    pub async fn stop(&mut self) {
        self.deployment.stop_all().await;
        self.broker.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::through;

    #[test]
    fn a_url_goes_through_another_address() {
        let addr = "10.213.2.1:40000".parse().unwrap();
        assert_eq!(
            through(
                "postgres://postgres@127.0.0.1:5432/db?sslmode=disable",
                addr
            ),
            "postgres://postgres@10.213.2.1:40000/db?sslmode=disable"
        );
        assert_eq!(
            through("postgres://localhost/db", addr),
            "postgres://10.213.2.1:40000/db"
        );
    }
}
