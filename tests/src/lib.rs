//! Test harness: a fresh, migrated database per test and Chronicle served on an
//! ephemeral port, with typed request helpers.
//!
//! The server under test is the real router over the real PostgreSQL
//! (`CHRONICLE_TEST_DATABASE_URL`, default the local server's `postgres` database, used
//! only to create and drop `chronicle_test_*` databases).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use chronicle_api::auth::JwtKeys;
use chronicle_api::{AppState, HttpLimits, router};
use chronicle_commands::{CommandService, CommandSettings};
use chronicle_domain::Role;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

/// The signing key of every test server.
pub const TEST_JWT_SECRET: &[u8] = b"chronicle-test-secret-0123456789abcdef";

/// The server login used to create and drop test databases.
fn admin_options() -> PgConnectOptions {
    let url = std::env::var("CHRONICLE_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("CHRONICLE_DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    PgConnectOptions::from_str(&url)
        .expect("CHRONICLE_TEST_DATABASE_URL is not a postgres URL")
        .database("postgres")
}

/// A database that exists for one test and is dropped with it (also when it panics).
pub struct TestDb {
    pub name: String,
    pub options: PgConnectOptions,
}

impl TestDb {
    /// Creates and migrates a fresh database.
    pub async fn create() -> Self {
        let name = format!("chronicle_test_{}", Uuid::new_v4().simple());
        let admin = admin_options();
        let options = admin.clone().database(&name);
        let mut conn = PgConnection::connect_with(&admin)
            .await
            .expect("connect to postgres");
        sqlx::query(&format!(
            "CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0"
        ))
        .execute(&mut conn)
        .await
        .expect("create test database");
        conn.close().await.ok();
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect_with(options.clone())
            .await
            .unwrap();
        chronicle_eventstore::migrate(&pool).await.expect("migrate");
        pool.close().await;
        Self { name, options }
    }

    /// A pool on this database.
    pub async fn pool(&self, max_connections: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(self.options.clone())
            .await
            .expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any async context we could await in; a short-lived runtime
        // on its own thread does the work, even while a failed test unwinds.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect_with(&admin_options()).await {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                            .execute(&mut conn)
                            .await;
                }
            });
        })
        .join();
    }
}

/// A running Chronicle HTTP server on its own database.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub pool: PgPool,
    pub keys: Arc<JwtKeys>,
    pub commands: Arc<CommandService>,
    pub db: Arc<TestDb>,
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The problem's `code`, or the empty string when the body has none.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or_default()
    }

    /// A UUID field of the body.
    pub fn id(&self, field: &str) -> Uuid {
        Uuid::parse_str(
            self.body[field]
                .as_str()
                .unwrap_or_else(|| panic!("no {field} in {self:?}")),
        )
        .unwrap()
    }
}

/// Options for [`spawn_app_with`].
#[derive(Clone, Debug, Default)]
pub struct AppOptions {
    pub commands: CommandSettings,
    pub limits: HttpLimits,
}

/// Serves Chronicle on a fresh database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

/// Serves Chronicle on a fresh database, with options.
pub async fn spawn_app_with(options: AppOptions) -> TestApp {
    let db = Arc::new(TestDb::create().await);
    spawn_on(db, options).await
}

/// Serves another Chronicle process on `db` (for tests of several writers).
pub async fn spawn_on(db: Arc<TestDb>, options: AppOptions) -> TestApp {
    let pool = db.pool(16).await;
    let keys = Arc::new(JwtKeys::hs256(TEST_JWT_SECRET));
    let commands = Arc::new(CommandService::new(pool.clone(), options.commands));
    let state = AppState {
        commands: commands.clone(),
        pool: pool.clone(),
        keys: keys.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router(state, options.limits))
            .await
            .ok();
    });
    TestApp {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        pool,
        keys,
        commands,
        db,
    }
}

impl TestApp {
    /// A valid token for `subject` with `roles`.
    pub fn token(&self, subject: &str, roles: &[Role]) -> String {
        self.keys
            .issue(subject, roles, chrono::Duration::hours(1))
            .unwrap()
    }

    /// A client token for `subject`.
    pub fn client_token(&self, subject: &str) -> String {
        self.token(subject, &[Role::Client])
    }

    /// POSTs `body` as JSON with `token` and extra headers.
    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> Reply {
        let mut request = self.client.post(format!("{}{path}", self.base)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        read(request.send().await.expect("request sent")).await
    }

    /// POSTs raw bytes with a content type and extra headers.
    pub async fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        content_type: &str,
        body: Vec<u8>,
    ) -> Reply {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        read(request.send().await.expect("request sent")).await
    }

    /// Opens an account for the token's subject and returns its id.
    pub async fn open_account(&self, token: &str, currency: &str, overdraft_limit: i64) -> Uuid {
        let reply = self
            .post(
                "/v1/accounts",
                Some(token),
                &[],
                &json!({ "currency": currency, "overdraft_limit": overdraft_limit }),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        reply.id("account_id")
    }

    /// Deposits into an account and expects success.
    pub async fn deposit(&self, token: &str, account: Uuid, amount: i64) -> Reply {
        let reply = self
            .post(
                &format!("/v1/accounts/{account}/deposits"),
                Some(token),
                &[],
                &json!({ "amount": amount }),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        reply
    }

    /// A booking request body for `seats` of `resource` starting `days_ahead` days from
    /// now plus `offset_minutes`, lasting two hours.
    pub fn booking_body(
        account: Uuid,
        resource: &str,
        seats: &[&str],
        days_ahead: i64,
        offset_minutes: i64,
    ) -> Value {
        let starts = chrono::Utc::now()
            + chrono::Duration::days(days_ahead)
            + chrono::Duration::minutes(offset_minutes);
        json!({
            "account_id": account,
            "resource_id": resource,
            "starts_at": starts.to_rfc3339(),
            "ends_at": (starts + chrono::Duration::hours(2)).to_rfc3339(),
            "seats": seats,
            "price": { "amount": 2_500, "currency": "EUR" },
            "guest": { "name": "Zoë Adams", "email": "zoe@example.org" },
            "notes": "aisle, please"
        })
    }

    /// How many events of `event_type` the store holds.
    pub async fn count_events(&self, event_type: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = $1")
            .bind(event_type)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// The events of one stream as (event_type, payload), in order.
    pub async fn stream(&self, aggregate_type: &str, id: Uuid) -> Vec<(String, Value)> {
        sqlx::query_as(
            "SELECT event_type, payload FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence",
        )
        .bind(aggregate_type)
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }
}

async fn read(response: reqwest::Response) -> Reply {
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap_or_default();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
    }
}
