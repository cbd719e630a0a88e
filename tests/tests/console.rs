//! The console in a real browser (issue 19): Debian's chromium, driven through
//! chromedriver (WebDriver), against a real `chronicle all` on a database and topics of
//! its own. `scripts/test.sh` installs chromium and chromium-driver when missing and
//! builds the binary first (run alone: `cargo build -p chronicle-api --bin chronicle`).
//!
//! With `CHRONICLE_CONSOLE_SCREENSHOTS=<dir>` each view is saved there as a PNG (how
//! docs/console/ was made).

#![allow(clippy::unwrap_used)] // helpers of a test may unwrap like the test itself

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use chronicle_api::auth::JwtKeys;
use chronicle_domain::Role;
use chronicle_tests::{
    TEST_JWT_SECRET, TestApp, TestDb, eventually, free_port, kafka_brokers, wait_for_port,
};
use fantoccini::elements::Element;
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use uuid::Uuid;

/// How long the page may take to show what is asked of it.
const PATIENCE: Duration = Duration::from_secs(30);

/// The workspace's `chronicle` binary (`CHRONICLE_BIN` names another).
fn chronicle_binary() -> PathBuf {
    if let Ok(path) = std::env::var("CHRONICLE_BIN") {
        return path.into();
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug/chronicle")
}

/// `chronicle all` on its own database and topics.
struct Chronicle {
    base: String,
    http: reqwest::Client,
    keys: JwtKeys,
    dir: PathBuf,
    _process: Child,
    _db: TestDb,
}

impl Chronicle {
    async fn start() -> Self {
        let db = TestDb::create().await;
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("chronicle-console-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("chronicle.log")).unwrap();
        let binary = chronicle_binary();
        let process = Command::new(&binary)
            .arg("all")
            .env("CHRONICLE_DATABASE_URL", db.url())
            .env("CHRONICLE_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("CHRONICLE_KAFKA_BROKERS", kafka_brokers())
            .env(
                "CHRONICLE_TOPIC_PREFIX",
                format!("test-{}.", Uuid::new_v4().simple()),
            )
            .env("CHRONICLE_KAFKA_PARTITIONS", "3")
            .env("CHRONICLE_DATA_DIR", dir.join("data"))
            .env("CHRONICLE_SEARCH_DIR", dir.join("search"))
            .env(
                "CHRONICLE_JWT_SECRET",
                String::from_utf8_lossy(TEST_JWT_SECRET).into_owned(),
            )
            .env("CHRONICLE_RATE_LIMIT_PER_SECOND", "100000")
            .env("CHRONICLE_RATE_LIMIT_BURST", "100000")
            .env("CHRONICLE_SCHEDULER_TICK_MS", "200")
            .env("CHRONICLE_SEARCH_COMMIT_MS", "100")
            .env("CHRONICLE_CHECKPOINT_SECONDS", "1")
            .env("CHRONICLE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{} all: {e} (build it, or set CHRONICLE_BIN)",
                    binary.display()
                )
            });
        wait_for_port(&format!("127.0.0.1:{port}")).await;
        let chronicle = Self {
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            keys: JwtKeys::hs256(TEST_JWT_SECRET),
            dir,
            _process: process,
            _db: db,
        };
        eventually("chronicle is ready", || async {
            let ready = chronicle
                .http
                .get(format!("{}/readyz", chronicle.base))
                .send()
                .await;
            match ready {
                Ok(r) if r.status() == StatusCode::OK => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        chronicle
    }

    fn token(&self, subject: &str, roles: &[Role]) -> String {
        self.keys
            .issue(subject, roles, chrono::Duration::hours(1))
            .unwrap()
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, token: &str, path: &str, body: Value) -> Value {
        let (status, body) = self
            .send(
                self.http
                    .post(format!("{}{path}", self.base))
                    .bearer_auth(token)
                    .json(&body),
            )
            .await;
        assert!(status.is_success(), "POST {path}: {status} {body}");
        body
    }

    async fn get(&self, token: &str, path: &str) -> (StatusCode, Value) {
        self.send(
            self.http
                .get(format!("{}{path}", self.base))
                .bearer_auth(token),
        )
        .await
    }

    async fn open_account(&self, client: &str, currency: &str) -> Uuid {
        let body = json!({"currency": currency, "overdraft_limit": 0});
        let opened = self.post(client, "/v1/accounts", body).await;
        opened["account_id"].as_str().unwrap().parse().unwrap()
    }

    /// A client's account in `currency` with `deposit`, and a booking of seat A1 of
    /// `resource` for `price` on it that the process manager confirmed (its payment
    /// captured, the account charged): (account, booking).
    async fn confirmed_booking(
        &self,
        client: &str,
        currency: &str,
        deposit: i64,
        (resource, price): (&str, i64),
    ) -> (Uuid, Uuid) {
        let account = self.open_account(client, currency).await;
        self.post(
            client,
            &format!("/v1/accounts/{account}/deposits"),
            json!({"amount": deposit}),
        )
        .await;
        let mut body = TestApp::booking_body(account, resource, &["A1"], 10, 0);
        body["price"] = json!({"amount": price, "currency": currency});
        let booking: Uuid = self.post(client, "/v1/bookings", body).await["booking_id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        eventually("the booking is confirmed", || async {
            let (_, body) = self.get(client, &format!("/v1/bookings/{booking}")).await;
            if body["status"] == "confirmed" {
                Ok(())
            } else {
                Err(body.to_string())
            }
        })
        .await;
        (account, booking)
    }
}

impl Drop for Chronicle {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Headless chromium through chromedriver.
struct Browser {
    client: Client,
    _driver: Child,
}

impl Browser {
    async fn open() -> Self {
        let driver =
            std::env::var("CHRONICLE_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let chromium =
            std::env::var("CHRONICLE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let port = free_port();
        let process = Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{driver}: {e} (scripts/test.sh installs chromium-driver)"));
        wait_for_port(&format!("127.0.0.1:{port}")).await;
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--window-size=1366,900", "--lang=en-GB"]
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a chromium session");
        Self {
            client,
            _driver: process,
        }
    }

    async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
    }

    async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.unwrap().len()
    }

    async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("could not click {css}: {e}"));
    }

    /// Opens a view from the navigation and waits until it shows (routing follows the
    /// `hashchange` event, after the click returns).
    async fn open_view(&self, name: &str) {
        self.click(&format!("#nav-{name}")).await;
        self.find(&format!("#view-{name}:not([hidden])")).await;
    }

    async fn fill(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    /// Sets a date or time field as the browser's own picker would (typing into one
    /// depends on the locale's format).
    async fn set(&self, css: &str, value: &str) {
        self.find(css).await;
        self.client
            .execute(
                "const field = document.querySelector(arguments[0]);
                 field.value = arguments[1];
                 field.dispatchEvent(new Event('input', {bubbles: true}));
                 field.dispatchEvent(new Event('change', {bubbles: true}));",
                vec![json!(css), json!(value)],
            )
            .await
            .unwrap();
    }

    /// Form controls on the page without a label (an accessible name).
    async fn unlabelled(&self) -> Vec<String> {
        let found = self
            .client
            .execute(
                "return [...document.querySelectorAll('input, select, textarea, button')]
                   .filter(e => e.type !== 'hidden')
                   .filter(e => e.tagName === 'BUTTON'
                     ? !e.textContent.trim() && !e.getAttribute('aria-label')
                     : e.labels.length === 0 && !e.getAttribute('aria-label')
                       && !e.getAttribute('aria-labelledby'))
                   .map(e => e.id || e.outerHTML.slice(0, 80));",
                vec![],
            )
            .await
            .unwrap();
        serde_json::from_value(found).unwrap()
    }

    /// Picks `value` in the `<select>` at `css`.
    async fn choose(&self, css: &str, value: &str) {
        self.click(&format!("{css} option[value='{value}']")).await;
    }

    async fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.find(css).await.attr(name).await.unwrap()
    }

    /// Signs in with `token` and waits for the page to say who it is.
    async fn sign_in(&self, base: &str, token: &str) {
        self.client.goto(&format!("{base}/console")).await.unwrap();
        self.fill("#token", token).await;
        self.click("#sign-in").await;
        self.find("#who").await;
        self.find("#sign-out").await;
    }

    async fn screenshot(&self, name: &str) {
        let Ok(dir) = std::env::var("CHRONICLE_CONSOLE_SCREENSHOTS") else {
            return;
        };
        std::fs::create_dir_all(&dir).unwrap();
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(PathBuf::from(dir).join(format!("{name}.png")), png).unwrap();
    }

    /// The problem the page shows, as "title: detail", once it shows one (the region is
    /// on the page, hidden and empty, until then).
    async fn problem(&self) -> String {
        let shown = self.find("#error:not([hidden])").await;
        let title = shown
            .find(Locator::Css(".title"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let detail = shown
            .find(Locator::Css(".detail"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        format!("{title}: {detail}")
    }

    async fn close(self) {
        let _ = self.client.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_walks_a_booking_to_its_payment_and_the_account_and_verifies_it() {
    let chronicle = Chronicle::start().await;
    let alice = chronicle.token("alice", &[Role::Client]);
    let (account, booking) = chronicle
        .confirmed_booking(&alice, "EUR", 10_000, ("hall", 2_500))
        .await;
    let auditor = chronicle.token("eve", &[Role::Auditor]);
    let browser = Browser::open().await;
    browser.sign_in(&chronicle.base, &auditor).await;

    // The booking found by its guest's name (the search index follows the log), and its
    // history.
    browser.open_view("streams").await;
    browser.fill("#stream-search", "Zoë").await;
    let hit = format!("#search-results .open-stream[data-id='{booking}']");
    eventually("the booking is found by its guest", || async {
        browser.click("#stream-search-go").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        match browser.count(&hit).await {
            0 => Err("not indexed yet".to_owned()),
            _ => Ok(()),
        }
    })
    .await;
    browser.click(&hit).await;
    browser
        .find("#timeline li.event[data-type='BookingConfirmed']")
        .await;
    assert_eq!(
        browser
            .attr("#timeline li.event", "data-type")
            .await
            .as_deref(),
        Some("BookingRequested"),
        "the history starts with the request"
    );
    browser.screenshot("streams").await;

    // To its payment, and from the payment to the account it charged.
    browser
        .click("#timeline .id-link[data-type='payment']")
        .await;
    browser.find("#stream-title[data-type='payment']").await;
    browser.find("#timeline li.event").await;
    browser
        .click("#timeline .id-link[data-type='account']")
        .await;
    browser
        .find(&format!(
            "#stream-title[data-type='account'][data-id='{account}']"
        ))
        .await;
    let charge = browser
        .find("#timeline li.event[data-type='FundsWithdrawn']")
        .await;
    assert_eq!(
        browser.count("#timeline li.event").await,
        3,
        "opened, deposited, charged"
    );

    // The charge was caused by an event of the booking's flow: the link leads to it.
    let cause = charge
        .find(Locator::Css(".causation"))
        .await
        .unwrap()
        .attr("data-causation")
        .await
        .unwrap()
        .expect("the charge names its cause");
    charge
        .find(Locator::Css(".causation"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .find(&format!(
            "#timeline li.event.selected[data-event-id='{cause}']"
        ))
        .await;
    browser.screenshot("causation").await;

    // Back on the account: the balance after each event, from the temporal read models.
    browser.choose("#stream-type", "account").await;
    browser.fill("#stream-id", &account.to_string()).await;
    browser.click("#stream-open").await;
    browser
        .find("#timeline li.event[data-type='FundsWithdrawn']")
        .await;
    let slider = browser.find("#state-slider").await;
    slider.click().await.unwrap();
    slider.send_keys(&Key::Home).await.unwrap();
    slider.send_keys(&Key::Right).await.unwrap();
    browser.find("#state[data-sequence='2']").await;
    assert_eq!(
        browser
            .attr("#state-balance", "data-amount")
            .await
            .as_deref(),
        Some("10000"),
        "after the deposit"
    );
    slider.send_keys(&Key::Right).await.unwrap();
    browser.find("#state[data-sequence='3']").await;
    assert_eq!(
        browser
            .attr("#state-balance", "data-amount")
            .await
            .as_deref(),
        Some("7500"),
        "after the booking's charge of 2,500"
    );
    browser.screenshot("state").await;

    // Integrity: the latest signed checkpoint, and one stream verified through the API.
    browser.open_view("integrity").await;
    eventually("a checkpoint is signed", || async {
        let (_, page) = chronicle.get(&auditor, "/v1/audit/checkpoints").await;
        let signed = page["items"]
            .as_array()
            .is_some_and(|items| !items.is_empty());
        if signed {
            Ok(())
        } else {
            Err(page.to_string())
        }
    })
    .await;
    browser.client.refresh().await.unwrap();
    // Its signature checked in the browser (WebCrypto's Ed25519) with the public key.
    browser
        .find("#checkpoint-status[data-signature='valid']")
        .await;
    browser.choose("#verify-type", "booking").await;
    browser.fill("#verify-id", &booking.to_string()).await;
    browser.click("#verify-run").await;
    browser.find("#verify-outcome[data-verified='true']").await;
    let (status, verification) = chronicle
        .get(
            &auditor,
            &format!("/v1/audit/booking/{booking}/verification"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{verification}");
    assert_eq!(verification["verified"], true, "{verification}");
    browser.screenshot("integrity").await;
    assert_eq!(
        browser.unlabelled().await,
        Vec::<String>::new(),
        "every control labelled"
    );

    // The guest asks to be forgotten: the history keeps its events, the fields read erased.
    let privacy = chronicle.token("dpo", &[Role::Privacy]);
    chronicle
        .post(
            &privacy,
            "/v1/subjects/erasure",
            json!({"email": "zoe@example.org"}),
        )
        .await;
    browser.open_view("streams").await;
    browser.choose("#stream-type", "booking").await;
    browser.fill("#stream-id", &booking.to_string()).await;
    browser.click("#stream-open").await;
    browser
        .find("#timeline li.event[data-type='BookingRequested'] .erased")
        .await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analyst_sees_revenue_drawn_and_occupancy_at_two_times() {
    let chronicle = Chronicle::start().await;
    let alice = chronicle.token("alice", &[Role::Client]);
    // Revenue in two currencies.
    chronicle
        .confirmed_booking(&alice, "EUR", 10_000, ("hall", 2_500))
        .await;
    chronicle
        .confirmed_booking(&alice, "USD", 10_000, ("studio", 4_000))
        .await;
    let analyst = chronicle.token("ann", &[Role::Analyst]);
    let today = chrono::Utc::now().date_naive();
    let (from, to) = (today - chrono::Days::new(1), today + chrono::Days::new(1));
    let revenue_path =
        format!("/v1/analytics/revenue?from={from}T00:00:00Z&to={to}T00:00:00Z&bucket=day");
    let expected = eventually("the capture is in the revenue", || async {
        let (_, body) = chronicle.get(&analyst, &revenue_path).await;
        match body["buckets"].as_array() {
            Some(buckets) if buckets.len() == 2 => Ok(buckets.clone()),
            _ => Err(body.to_string()),
        }
    })
    .await;

    let browser = Browser::open().await;
    browser.sign_in(&chronicle.base, &analyst).await;
    assert_eq!(
        browser.count("#nav-streams, #nav-integrity").await,
        0,
        "no audit views for analysts"
    );
    browser.open_view("analytics").await;
    browser.set("#revenue-from", &from.to_string()).await;
    browser.set("#revenue-to", &to.to_string()).await;
    browser.choose("#revenue-bucket", "day").await;
    browser.click("#revenue-load").await;
    let chart = browser.find("#revenue-chart[data-drawn='true']").await;
    let drawn: Value =
        serde_json::from_str(&chart.attr("data-series").await.unwrap().unwrap()).unwrap();
    // Every bucket the API gave, drawn and tabled: 2,500 EUR cents and 4,000 USD cents
    // captured today.
    let mut totals = std::collections::BTreeMap::new();
    for bucket in &expected {
        let currency = bucket["currency"].as_str().unwrap();
        let amount = bucket["revenue"].as_i64().unwrap();
        *totals.entry(currency.to_owned()).or_insert(0) += amount;
        let row = format!("#revenue-table tr[data-currency='{currency}'][data-amount='{amount}']");
        browser.find(&row).await;
        let series = drawn["series"][currency]
            .as_array()
            .expect("a series per currency");
        assert!(
            series
                .iter()
                .any(|v| v.as_f64() == Some(amount as f64 / 100.0)),
            "{amount} drawn in {series:?}"
        );
    }
    assert_eq!(
        totals,
        [("EUR".to_owned(), 2_500), ("USD".to_owned(), 4_000)].into(),
        "{expected:?}"
    );
    browser.screenshot("revenue").await;

    // Occupancy of the hall: seat A1 is held ten days from now, not now.
    let later = (chrono::Utc::now() + chrono::Duration::days(10) + chrono::Duration::minutes(30))
        .format("%Y-%m-%dT%H:%M")
        .to_string();
    browser.fill("#occupancy-resource", "hall").await;
    browser.set("#occupancy-as-of", &later).await;
    browser.click("#occupancy-load").await;
    browser.find("#occupancy-result[data-held='1']").await;
    browser.screenshot("occupancy").await;
    // The same instant as Chronicle knew it an hour ago, before the booking: nothing held.
    let hour_ago = (chrono::Utc::now() - chrono::Duration::hours(1))
        .format("%Y-%m-%dT%H:%M")
        .to_string();
    browser.set("#occupancy-known-at", &hour_ago).await;
    browser.click("#occupancy-load").await;
    browser.find("#occupancy-result[data-held='0']").await;
    assert_eq!(
        browser.unlabelled().await,
        Vec::<String>::new(),
        "every control labelled"
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sees_its_own_events_live_and_nothing_of_others_or_analytics() {
    let chronicle = Chronicle::start().await;
    let alice = chronicle.token("alice", &[Role::Client]);
    let bob = chronicle.token("bob", &[Role::Client]);
    let account = chronicle.open_account(&alice, "EUR").await;
    let bobs = chronicle.open_account(&bob, "EUR").await;

    let browser = Browser::open().await;
    browser
        .client
        .goto(&format!("{}/console", chronicle.base))
        .await
        .unwrap();
    assert_eq!(
        browser.unlabelled().await,
        Vec::<String>::new(),
        "sign-in labelled"
    );
    browser.sign_in(&chronicle.base, &alice).await;
    assert_eq!(
        browser.count("#nav-analytics, #nav-integrity").await,
        0,
        "no analytics or integrity for a client"
    );

    // Live: a deposit made elsewhere arrives.
    browser.open_view("live").await;
    browser.click("#live-start").await;
    eventually("the live stream opens", || async {
        let status = browser.find("#live-status").await.text().await.unwrap();
        if status.to_lowercase().contains("open") {
            Ok(())
        } else {
            Err(status)
        }
    })
    .await;
    chronicle
        .post(
            &alice,
            &format!("/v1/accounts/{account}/deposits"),
            json!({"amount": 4_200, "reference": "live"}),
        )
        .await;
    browser
        .find(&format!(
            "#live-events li[data-type='FundsDeposited'][data-aggregate-id='{account}']"
        ))
        .await;
    browser.screenshot("live").await;
    // Bob's deposit does not reach Alice's page.
    chronicle
        .post(
            &bob,
            &format!("/v1/accounts/{bobs}/deposits"),
            json!({"amount": 1, "reference": "not hers"}),
        )
        .await;
    chronicle
        .post(
            &alice,
            &format!("/v1/accounts/{account}/deposits"),
            json!({"amount": 1, "reference": "after bob's"}),
        )
        .await;
    eventually("alice's second deposit arrives", || async {
        match browser
            .count("#live-events li[data-type='FundsDeposited']")
            .await
        {
            2 => Ok(()),
            n => Err(format!("{n} deposits shown")),
        }
    })
    .await;
    assert_eq!(
        browser
            .count(&format!("#live-events li[data-aggregate-id='{bobs}']"))
            .await,
        0,
        "nothing of bob's"
    );

    // Her own account opens; Bob's answers the API's problem, shown as such.
    browser.open_view("streams").await;
    browser.choose("#stream-type", "account").await;
    browser.fill("#stream-id", &account.to_string()).await;
    browser.click("#stream-open").await;
    browser.find("#state-balance[data-amount='4201']").await;
    browser.fill("#stream-id", &bobs.to_string()).await;
    browser.click("#stream-open").await;
    let shown = browser.problem().await;
    let (status, problem) = chronicle.get(&alice, &format!("/v1/accounts/{bobs}")).await;
    assert!(status.is_client_error(), "{status}");
    assert_eq!(
        shown,
        format!(
            "{}: {}",
            problem["title"].as_str().unwrap(),
            problem["detail"].as_str().unwrap()
        ),
        "the API's problem, title and detail"
    );
    // Analytics asked for by address: the API refuses, and the page says so.
    browser
        .client
        .goto(&format!("{}/console#/analytics", chronicle.base))
        .await
        .unwrap();
    assert_eq!(
        browser.count("#revenue-load").await,
        0,
        "no analytics view for a client"
    );
    browser.close().await;
}
