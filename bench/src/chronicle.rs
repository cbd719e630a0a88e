//! A `chronicle` process on a database of its own, and an HTTP client of it: what the
//! command and soak benchmarks drive.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chronicle_tests::TestDb;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use uuid::Uuid;

pub const JWT_SECRET: &str = "chronicle-bench-secret-not-for-production-0123456789";

pub fn chronicle_bin() -> String {
    std::env::var("CHRONICLE_BIN").unwrap_or_else(|_| "target/release/chronicle".to_owned())
}

/// A `chronicle` process on a database of its own.
pub struct Server {
    child: Child,
    pub base: String,
    pub token: String,
    pub data_dir: PathBuf,
    pub db: TestDb,
}

impl Server {
    pub async fn start(role: &str) -> anyhow::Result<Self> {
        Self::start_with(role, &[]).await
    }

    /// Starts `chronicle <role>` with extra environment variables.
    pub async fn start_with(role: &str, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let db = TestDb::create().await;
        let port = free_port()?;
        let data_dir = std::env::temp_dir().join(format!("chronicle-bench-{}", Uuid::new_v4()));
        let mut command = Command::new(chronicle_bin());
        command
            .arg(role)
            .env("CHRONICLE_DATABASE_URL", db.url())
            .env("CHRONICLE_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("CHRONICLE_DATA_DIR", &data_dir)
            .env("CHRONICLE_JWT_SECRET", JWT_SECRET)
            .env(
                "CHRONICLE_TOPIC_PREFIX",
                format!("bench-{}.", Uuid::new_v4().simple()),
            )
            // The per-principal rate limit protects a shared service; one benchmark
            // principal would hit it, so it is lifted here (and only here).
            .env("CHRONICLE_RATE_LIMIT_PER_SECOND", "1000000000")
            .env("CHRONICLE_RATE_LIMIT_BURST", "1000000000")
            .env("CHRONICLE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot run {} (build it first)", chronicle_bin()))?;
        let base = format!("http://127.0.0.1:{port}");
        let token = token().await?;
        let server = Self {
            child,
            base,
            token,
            data_dir,
            db,
        };
        server.wait_alive().await?;
        Ok(server)
    }

    pub async fn wait_alive(&self) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(reply) = client.get(format!("{}/healthz", self.base)).send().await
                && reply.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("chronicle did not come up on {} within 60 s", self.base)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SIGTERM: a graceful stop, so the database can be dropped afterwards.
            let _ = Command::new("kill").arg(pid.to_string()).status().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        let _ = self.child.kill().await;
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A client token for the benchmark principal.
pub async fn token() -> anyhow::Result<String> {
    let output = Command::new(chronicle_bin())
        .args(["token", "--sub", "bench", "--role", "client"])
        .env("CHRONICLE_JWT_SECRET", JWT_SECRET)
        .output()
        .await?;
    if !output.status.success() {
        bail!(
            "chronicle token failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One HTTP client's view: the server and its token.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    pub fn new(server: &Server, connections: usize) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(connections)
                .timeout(Duration::from_secs(30))
                .build()?,
            base: server.base.clone(),
            token: server.token.clone(),
        })
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let request = self.http.post(format!("{}{path}", self.base)).json(body);
        self.send(path, request).await
    }

    /// POSTs `body` with an `Idempotency-Key`.
    pub async fn post_with_key(
        &self,
        path: &str,
        body: &Value,
        key: &str,
    ) -> anyhow::Result<Value> {
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("Idempotency-Key", key)
            .json(body);
        self.send(path, request).await
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let request = self.http.get(format!("{}{path}", self.base));
        self.send(path, request).await
    }

    /// The server's `/metrics` page.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let reply = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await?;
        Ok(reply.text().await?)
    }

    /// Sends `request` with the token; an answer other than 2xx is an error naming the
    /// path, the status and the body.
    async fn send(&self, path: &str, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let reply = request.bearer_auth(&self.token).send().await?;
        let status = reply.status();
        let body: Value = reply.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{path}: {status} {body}");
        }
        Ok(body)
    }

    pub async fn open(&self) -> anyhow::Result<Uuid> {
        let body = self
            .post("/v1/accounts", &json!({"currency": "EUR"}))
            .await?;
        body["account_id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .context("no account_id in the reply")
    }

    pub async fn deposit(
        &self,
        account: Uuid,
        amount: u64,
        reference: &str,
    ) -> anyhow::Result<Value> {
        self.post(
            &format!("/v1/accounts/{account}/deposits"),
            &json!({"amount": amount, "reference": reference}),
        )
        .await
    }

    pub async fn book(&self, account: Uuid, resource: &str) -> anyhow::Result<()> {
        self.post("/v1/bookings", &booking_body(account, resource))
            .await
            .map(drop)
    }

    /// Sends a request with the token and returns its status and whether it came with
    /// `Retry-After`, whatever the status; the body is read and dropped.
    pub async fn answer(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let reply = request.send().await?;
        let answer = Answer {
            status: reply.status().as_u16(),
            retry_after: reply.headers().contains_key(reqwest::header::RETRY_AFTER),
        };
        reply.bytes().await?;
        Ok(answer)
    }
}

/// A status and whether `Retry-After` came with it.
#[derive(Clone, Copy, Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: bool,
}

/// A request for two seats of `resource` a month from now, for a guest of its own (named
/// after the resource): each booking is a new data subject, whose personal fields are
/// sealed under a key made for it (ADR 0035), the costlier case for the write path.
pub fn booking_body(account: Uuid, resource: &str) -> Value {
    let starts = chrono::Utc::now() + chrono::Duration::days(30);
    json!({
        "account_id": account, "resource_id": resource, "seats": ["1", "2"],
        "starts_at": starts, "ends_at": starts + chrono::Duration::hours(2),
        "price": {"amount": 2_500, "currency": "EUR"},
        "guest": {"name": format!("Guest of {resource}"), "email": format!("{resource}@guests.example.org")},
        "notes": "bench"
    })
}
