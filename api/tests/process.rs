//! The `chronicle` binary as an operator runs it: SIGTERM under load loses nothing that
//! was acknowledged, and a schema-driven fuzzer finds no 5xx and no response outside the
//! OpenAPI document.

#![allow(clippy::unwrap_used)] // helpers of a test may unwrap like the test itself

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chronicle_tests::{TEST_JWT_SECRET, TestDb, kafka_brokers};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use uuid::Uuid;

/// One `chronicle all` process on its own database, topics and data directory.
struct Instance {
    env: Vec<(String, String)>,
    base: String,
}

impl Instance {
    fn new(db: &TestDb, extra: &[(&str, &str)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let data =
            std::env::temp_dir().join(format!("chronicle-process-{}", Uuid::new_v4().simple()));
        let mut env = vec![
            ("CHRONICLE_DATABASE_URL".to_owned(), db.url()),
            (
                "CHRONICLE_HTTP_ADDR".to_owned(),
                format!("127.0.0.1:{port}"),
            ),
            ("CHRONICLE_KAFKA_BROKERS".to_owned(), kafka_brokers()),
            (
                "CHRONICLE_TOPIC_PREFIX".to_owned(),
                format!("proc-{}.", Uuid::new_v4().simple()),
            ),
            ("CHRONICLE_KAFKA_PARTITIONS".to_owned(), "3".to_owned()),
            (
                "CHRONICLE_DATA_DIR".to_owned(),
                data.to_string_lossy().into_owned(),
            ),
            (
                "CHRONICLE_JWT_SECRET".to_owned(),
                String::from_utf8_lossy(TEST_JWT_SECRET).into_owned(),
            ),
            ("CHRONICLE_LOG".to_owned(), "warn".to_owned()),
        ];
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        Self {
            env,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_chronicle"));
        command
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    async fn start(&self) -> Child {
        let child = self
            .command(&["all"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while client
            .get(format!("{}/healthz", self.base))
            .send()
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "chronicle did not come up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        child
    }

    async fn token(&self, sub: &str, roles: &[&str]) -> String {
        let mut args = vec!["token", "--sub", sub];
        for role in roles {
            args.extend(["--role", role]);
        }
        let output = self.command(&args).output().await.unwrap();
        assert!(output.status.success());
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }
}

fn terminate(child: &Child) {
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().unwrap().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_exits_zero_and_loses_nothing_acknowledged() {
    let db = TestDb::create().await;
    let instance = Instance::new(&db, &[]);
    let mut child = instance.start().await;
    let token = instance.token("alice", &["client"]).await;
    let acknowledged: Arc<Mutex<Vec<i64>>> = Arc::default();
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (base, token, acknowledged) =
                (instance.base.clone(), token.clone(), acknowledged.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut account: Option<Uuid> = None;
                loop {
                    let request = match account {
                        None => client
                            .post(format!("{base}/v1/accounts"))
                            .json(&json!({ "currency": "EUR" })),
                        Some(id) => client
                            .post(format!("{base}/v1/accounts/{id}/deposits"))
                            .json(&json!({ "amount": 3 })),
                    };
                    let Ok(response) = request.bearer_auth(&token).send().await else {
                        return; // the server is gone
                    };
                    if !response.status().is_success() {
                        continue;
                    }
                    let Ok(body) = response.json::<Value>().await else {
                        return;
                    };
                    account = body["account_id"].as_str().and_then(|s| s.parse().ok());
                    acknowledged
                        .lock()
                        .unwrap()
                        .push(body["position"].as_i64().unwrap());
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    terminate(&child);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exited in time")
        .unwrap();
    assert!(status.success(), "exit status {status}");
    for worker in workers {
        let _ = tokio::time::timeout(Duration::from_secs(10), worker).await;
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 20,
        "only {} commands went through",
        acknowledged.len()
    );

    // Every acknowledged command is in the store now, and reaches the read models after
    // a restart.
    let pool = db.pool(2).await;
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE global_position = ANY($1)")
            .bind(&acknowledged)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored as usize, acknowledged.len());
    let mut again = instance.start().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let applied: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM rm_applied_events WHERE global_position = ANY($1)",
        )
        .bind(&acknowledged)
        .fetch_one(&pool)
        .await
        .unwrap();
        if applied as usize == acknowledged.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "read models applied {applied} of {}",
            acknowledged.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    terminate(&again);
    let status = tokio::time::timeout(Duration::from_secs(30), again.wait())
        .await
        .expect("exited in time")
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_response_outside_the_schema() {
    let schemathesis = std::env::var("CHRONICLE_TEST_SCHEMATHESIS")
        .expect("CHRONICLE_TEST_SCHEMATHESIS is not set: run the suite with scripts/test.sh, which installs schemathesis");
    let db = TestDb::create().await;
    let instance = Instance::new(
        &db,
        &[
            ("CHRONICLE_RATE_LIMIT_PER_SECOND", "100000"),
            ("CHRONICLE_RATE_LIMIT_BURST", "100000"),
        ],
    );
    let mut child = instance.start().await;
    let token = instance
        .token("fuzzer", &["client", "admin", "analyst", "auditor"])
        .await;
    let output = Command::new(schemathesis)
        .args([
            "run",
            &format!("{}/openapi.json", instance.base),
            "--header",
            &format!("Authorization: Bearer {token}"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--phases",
            "coverage,fuzzing,stateful",
            "--max-examples",
            "25",
            "--seed",
            "20261125",
            // The live feed's stream does not end; tests/tests/feed.rs covers it.
            "--exclude-path",
            "/v1/feed",
            "--no-color",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .await
        .unwrap();
    terminate(&child);
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    let report = String::from_utf8_lossy(&output.stdout);
    let summary: Vec<&str> = report.lines().rev().take(25).collect();
    eprintln!(
        "{}",
        summary.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    assert!(
        output.status.success(),
        "schemathesis failed:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains("passed"), "{report}");
}
