//! What one scenario runs on: its database, broker, Chronicle and scratch directory.
//! Dropped in field order, processes first, so everything is stopped at the scenario's
//! end, also when it panics.

use std::path::PathBuf;

use chronicle_tests::TestDb;
use uuid::Uuid;

use crate::Fault;
use crate::broker::Broker;
use crate::deployment::{Deployment, Placement};
use crate::process::Launcher;

pub struct Stage {
    pub deployment: Deployment,
    pub broker: Broker,
    pub pool: sqlx::PgPool,
    pub db: TestDb,
    pub scratch: PathBuf,
    pub search: PathBuf,
}

impl Stage {
    pub async fn new(fault: Fault) -> Self {
        let scratch =
            std::env::temp_dir().join(format!("chronicle-faults-{}", Uuid::new_v4().simple()));
        let data = scratch.join("data");
        let search = data.join("search");
        let db = TestDb::create().await;
        let pool = db.pool(4).await;
        let broker = Broker::start(
            "127.0.0.1",
            scratch.join("broker"),
            scratch.join("tansu.log"),
            Launcher::default(),
        )
        .await;
        let mut deployment = Deployment::new(Placement {
            database_url: db.url(),
            brokers: broker.addr.clone(),
            http_host: "127.0.0.1".to_owned(),
            data,
            search: search.clone(),
            launcher: Launcher::default(),
            env: Vec::new(),
        });
        deployment.start(fault.split_roles()).await;
        Self {
            deployment,
            broker,
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
