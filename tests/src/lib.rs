//! Test harness: a fresh, migrated database per test and Chronicle served on an
//! ephemeral port, with typed request helpers.
//!
//! The server under test is the real router over the real PostgreSQL
//! (`CHRONICLE_TEST_DATABASE_URL`, default the local server's `postgres` database, used
//! only to create and drop `chronicle_test_*` databases).
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod pause;
pub mod seed;

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use chronicle_api::auth::JwtKeys;
use chronicle_api::settings::{Secret, Settings};
use chronicle_api::{HttpLimits, roles, router};
use chronicle_commands::{CommandService, CommandSettings};
use chronicle_domain::Role;
use chronicle_eventstore::envelope::Envelope;
use chronicle_projections::ProjectorSettings;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The signing key of every test server.
pub const TEST_JWT_SECRET: &[u8] = b"chronicle-test-secret-0123456789abcdef";

fn admin_url() -> String {
    std::env::var("CHRONICLE_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("CHRONICLE_DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Polls `check` every 20 ms until it gives `Ok`, and returns that; fails the test
/// with `what` and the last `Err` (what was seen instead) after 30 s. The one way tests
/// here wait for something to happen (never a fixed sleep).
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    eventually_within(what, Duration::from_secs(30), check).await
}

/// [`eventually`] with a bound of its own, for waits over large workloads.
pub async fn eventually_within<T, F, Fut>(what: &str, bound: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) => assert!(
                tokio::time::Instant::now() < deadline,
                "{what} did not happen within {bound:?}; last seen: {last}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The server login used to create and drop test databases.
pub fn admin_options() -> PgConnectOptions {
    options_of(&admin_url())
}

fn options_of(admin_url: &str) -> PgConnectOptions {
    PgConnectOptions::from_str(admin_url)
        .expect("CHRONICLE_TEST_DATABASE_URL is not a postgres URL")
        .database("postgres")
}

/// A URL of the database `name` on the test server: the admin URL with the database
/// replaced, for tools that take one.
pub fn database_url(name: &str) -> String {
    database_url_on(&admin_url(), name)
}

/// [`database_url`] on the server of `admin`.
fn database_url_on(admin: &str, name: &str) -> String {
    let (base, query) = admin.split_once('?').map_or((admin, ""), |(b, q)| (b, q));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut url = format!("{}/{name}", &base[..host_end]);
    if !query.is_empty() {
        url = format!("{url}?{query}");
    }
    url
}

/// A database that exists for one test and is dropped with it (also when it panics).
pub struct TestDb {
    pub name: String,
    pub options: PgConnectOptions,
    /// The URL of the server's `postgres` database it was created through.
    admin_url: String,
}

impl TestDb {
    /// Creates and migrates a fresh database.
    pub async fn create() -> Self {
        Self::create_on(&admin_url()).await
    }

    /// Creates and migrates a fresh database on the server of `admin_url` (a URL of a
    /// database there that the login can create databases from).
    pub async fn create_on(admin_url: &str) -> Self {
        let name = format!("chronicle_test_{}", Uuid::new_v4().simple());
        let admin = options_of(admin_url);
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
        chronicle_commands::schema::migrate(&pool)
            .await
            .expect("migrate");
        pool.close().await;
        Self {
            name,
            options,
            admin_url: admin_url.to_owned(),
        }
    }

    /// A URL of this database (the admin URL with the database replaced), for tools
    /// that take one.
    pub fn url(&self) -> String {
        database_url_on(&self.admin_url, &self.name)
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
        let admin = options_of(&self.admin_url);
        // Drop runs outside any async context we could await in; a short-lived runtime
        // on its own thread does the work, even while a failed test unwinds.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect_with(&admin).await {
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

/// A running Chronicle HTTP server on its own database, optionally with the relay and
/// the read-model projector running in-process against the test broker.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub pool: PgPool,
    pub keys: Arc<JwtKeys>,
    pub commands: Arc<CommandService>,
    pub db: Arc<TestDb>,
    pub settings: Settings,
    /// Cancelled when the app is dropped; stops every background task.
    pub shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        let _ = std::fs::remove_dir_all(&self.settings.search_dir);
    }
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Waits (30 s at most) until something listens at `addr`.
pub async fn wait_for_port(addr: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} never opened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The test broker (`CHRONICLE_KAFKA_BROKERS`; `scripts/test.sh` starts one).
pub fn kafka_brokers() -> String {
    std::env::var("CHRONICLE_KAFKA_BROKERS").expect(
        "CHRONICLE_KAFKA_BROKERS is not set: run the suite with scripts/test.sh, which starts a broker",
    )
}

/// Settings for a test app: the environment's, with a topic prefix of its own.
pub fn test_settings(options: &AppOptions) -> Settings {
    let mut settings = Settings::from_env().expect("test settings");
    if options.read_side {
        settings.kafka.brokers = kafka_brokers();
    }
    settings.commands = options.commands.clone();
    settings.limits = options.limits;
    settings.jwt_secret = Secret::new(String::from_utf8_lossy(TEST_JWT_SECRET));
    settings.kafka.topic_prefix = format!("test-{}.", Uuid::new_v4().simple());
    settings.kafka.partitions = 3;
    settings.projector = options.projector.clone();
    settings.relay.poll_interval = Duration::from_millis(200);
    settings.search_dir =
        std::env::temp_dir().join(format!("chronicle-test-search-{}", Uuid::new_v4().simple()));
    settings.search.commit_interval = Duration::from_millis(100);
    settings.process.tick = Duration::from_millis(100);
    // A transaction held open by a parallel test holds back the relay of every test
    // database (the snapshot horizon is cluster-wide), so `min_position` reads wait
    // longer than a deployment would; the 503 path has its own test with a short wait.
    settings.reads.min_position_timeout = Duration::from_secs(30);
    // Tests drive many requests from one principal; the rate limit has its own test.
    settings.protection.per_second = 1_000_000.0;
    settings.protection.burst = 1_000_000.0;
    settings
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
    pub projector: ProjectorSettings,
    /// Run the relay and the projectors too (needs the test broker).
    pub read_side: bool,
    /// Run the process manager too (with `read_side`).
    pub process_manager: bool,
}

impl AppOptions {
    /// Options with the read side running.
    pub fn with_read_side() -> Self {
        Self {
            read_side: true,
            ..Self::default()
        }
    }

    /// Options with the read side and the process manager running.
    pub fn with_process_manager() -> Self {
        Self {
            read_side: true,
            process_manager: true,
            ..Self::default()
        }
    }
}

/// Serves Chronicle on a fresh database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

/// Logs of the code under test, when `CHRONICLE_TEST_LOG` names a filter
/// (e.g. `chronicle=debug`); captured per test by the runner.
fn init_logging() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        if let Ok(filter) = std::env::var("CHRONICLE_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
}

/// Serves Chronicle on a fresh database, with options.
pub async fn spawn_app_with(options: AppOptions) -> TestApp {
    let db = Arc::new(TestDb::create().await);
    spawn_on(db, options).await
}

/// Serves Chronicle with the relay and the read-model projector on a fresh database.
pub async fn spawn_full_app() -> TestApp {
    spawn_app_with(AppOptions::with_read_side()).await
}

/// Serves another Chronicle process on `db` (for tests of several writers).
pub async fn spawn_on(db: Arc<TestDb>, options: AppOptions) -> TestApp {
    let settings = test_settings(&options);
    let app = spawn_with_settings(db, settings, options.read_side).await;
    if options.process_manager {
        app.start_process_manager();
    }
    app
}

/// Serves Chronicle on `db` with exactly these settings.
pub async fn spawn_with_settings(db: Arc<TestDb>, settings: Settings, read_side: bool) -> TestApp {
    init_logging();
    let pool = db.pool(16).await;
    let shutdown = CancellationToken::new();
    let state = roles::app_state(&settings, pool.clone(), &shutdown).expect("app state");
    let (keys, commands) = (state.keys.clone(), state.commands.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let app = router(state, settings.limits);
    let stop = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
            .ok();
    });
    let app = TestApp {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        pool,
        keys,
        commands,
        db,
        settings,
        shutdown,
    };
    if read_side {
        app.start_relay();
        app.start_projector();
    }
    app
}

impl TestApp {
    /// Runs the relay until the app is dropped.
    pub fn start_relay(&self) -> tokio::task::JoinHandle<()> {
        let (settings, pool, shutdown) = (
            self.settings.clone(),
            self.pool.clone(),
            self.shutdown.clone(),
        );
        tokio::spawn(async move {
            roles::relay(&settings, pool, shutdown).await.ok();
        })
    }

    /// Runs the read-model and search projectors until the app is dropped (or the task
    /// is aborted).
    ///
    /// A projector aborted just before may still hold the search index's writer: an
    /// aborted task's indexing or commit runs on in `spawn_blocking` to its end. The
    /// new one waits for that writer to be released.
    pub fn start_projector(&self) -> tokio::task::JoinHandle<()> {
        let read_models = roles::read_model_projector(&self.settings, self.pool.clone());
        let (settings, pool) = (self.settings.clone(), self.pool.clone());
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            let search = loop {
                match roles::search_projector(&settings, pool.clone()) {
                    Ok(search) => break search,
                    Err(_) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(error) => panic!("search projector: {error:#}"),
                }
            };
            tokio::join!(read_models.run(shutdown.clone()), search.run(shutdown));
        })
    }

    /// Runs the process manager until the app is dropped (or the task is aborted).
    /// Like `chronicle all`, it shares the HTTP API's key store.
    pub fn start_process_manager(&self) -> tokio::task::JoinHandle<()> {
        let process = match self.commands.key_store() {
            Some(keys) => {
                roles::process_manager_sharing(&self.settings, self.pool.clone(), keys.clone())
            }
            None => roles::process_manager(&self.settings, self.pool.clone()),
        };
        let (kafka, projector, shutdown) = (
            self.settings.kafka.clone(),
            self.settings.projector.clone(),
            self.shutdown.clone(),
        );
        tokio::spawn(async move { process.run(kafka, projector, shutdown).await })
    }

    /// Runs only the read-model projector until the app is dropped.
    pub fn start_projector_only_read_models(&self) -> tokio::task::JoinHandle<()> {
        let projector = chronicle_projections::Projector::new(
            Arc::new(chronicle_projections::read_models::ReadModels::new(
                self.pool.clone(),
            )),
            self.settings.kafka.clone(),
            self.settings.projector.clone(),
        );
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move { projector.run(shutdown).await })
    }

    /// Runs only the search projector until the app is dropped (or the task is aborted).
    /// Waits for the index writer if a previous projector still holds it.
    pub async fn start_search_projector(&self) -> tokio::task::JoinHandle<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let projector = loop {
            match roles::search_projector(&self.settings, self.pool.clone()) {
                Ok(projector) => break projector,
                Err(error) if tokio::time::Instant::now() < deadline => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("search projector: {error:#}"),
            }
        };
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move { projector.run(shutdown).await })
    }

    /// A valid token for `subject` with `roles`.
    pub fn token(&self, subject: &str, roles: &[Role]) -> String {
        self.keys
            .issue(subject, roles, chrono::Duration::hours(1))
            .unwrap()
    }

    /// A connection of a superuser who switched the event store's guards off
    /// (`session_replication_role = replica`), as an administrator tampering with it would.
    pub async fn guards_off(&self) -> PgConnection {
        let mut conn = PgConnection::connect_with(&self.db.options)
            .await
            .expect("a superuser connection");
        sqlx::query("SET session_replication_role = replica")
            .execute(&mut conn)
            .await
            .expect("guards off");
        conn
    }

    /// Runs `statement` (with `stream` bound to `$1`) as the database's superuser, past
    /// the event store's guards (`session_replication_role = replica`): what a hostile
    /// administrator can do, for the tamper tests.
    pub async fn as_superuser(&self, statement: &str, stream: &str) {
        let mut conn = self.guards_off().await;
        sqlx::query(statement)
            .bind(stream)
            .execute(&mut conn)
            .await
            .expect("the tampering statement");
        conn.close().await.expect("closed");
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

/// Every envelope on the app's topics, read by an independent consumer (its own group,
/// all partitions from the beginning), once `count` have arrived.
pub async fn consume_envelopes(app: &TestApp, count: usize) -> Vec<(i32, i64, Envelope)> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Message;
    let kafka = &app.settings.kafka;
    let consumer: StreamConsumer = kafka
        .client_config("test-reader")
        .set("group.id", format!("test-reader-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let topics = kafka.topics();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names).unwrap();
    let mut envelopes = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while envelopes.len() < count {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} envelopes arrived", envelopes.len()))
            .unwrap();
        let envelope: Envelope = serde_json::from_slice(message.payload().unwrap()).unwrap();
        envelopes.push((message.partition(), message.offset(), envelope));
    }
    envelopes
}

impl TestApp {
    /// Waits until the read models have applied every event in the store.
    pub async fn wait_until_projected(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (events, applied): (i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM rm_applied_events)",
            )
            .fetch_one(&self.pool)
            .await
            .unwrap();
            if events == applied {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "read models applied {applied} of {events} events"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// GETs `path` with `token` and query parameters (encoded properly).
    pub async fn get_query(&self, path: &str, token: &str, query: &[(&str, String)]) -> Reply {
        read(
            self.client
                .get(format!("{}{path}", self.base))
                .query(query)
                .bearer_auth(token)
                .send()
                .await
                .expect("request sent"),
        )
        .await
    }

    /// GETs `path` with `token`.
    pub async fn get(&self, path: &str, token: &str) -> Reply {
        read(
            self.client
                .get(format!("{}{path}", self.base))
                .bearer_auth(token)
                .send()
                .await
                .expect("request sent"),
        )
        .await
    }

    /// GETs `path` without a token and returns the body as text (metrics, docs).
    pub async fn get_text(&self, path: &str) -> String {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request sent")
            .text()
            .await
            .expect("a text body")
    }
}

/// The read tables as JSON, in key order, for comparing two projections.
pub async fn read_models_snapshot(pool: &PgPool) -> Value {
    let mut snapshot = serde_json::Map::new();
    for (table, order) in [
        ("accounts", "account_id"),
        ("account_ledger", "account_id, sequence"),
        ("bookings", "booking_id"),
        ("payments", "payment_id"),
    ] {
        let rows: Value = sqlx::query_scalar(&format!(
            "SELECT coalesce(json_agg(t ORDER BY {order}), '[]'::json) FROM {table} t"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        snapshot.insert(table.to_owned(), rows);
    }
    Value::Object(snapshot)
}
