//! Subscriptions end to end (issue 15, ADR 0034), against the real database and broker:
//! the HTTP API, the relay, the read models and the process manager's scheduler, with
//! Chronicle's clock moved through the months (`clock::travel_to`). The clock is
//! process-wide: nextest runs each test in a process of its own.

#![allow(clippy::unwrap_used)] // helpers of a test may unwrap like the test itself

use std::sync::Arc;

use chronicle_commands::process::ProcessManager;
use chronicle_eventstore::clock;
use chronicle_tests::pause::PauseAfter;
use chronicle_tests::{AppOptions, Reply, TestApp, eventually, spawn_app_with};
use chrono::{DateTime, Duration, TimeZone, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

const PRICE: i64 = 3_000;

fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap()
}

/// A running app with the process manager, a funded account, and the clock at `start`
/// (set last, so that a subscription started next starts within moments of it).
async fn app_at(start: DateTime<Utc>, funds: i64) -> (TestApp, String, Uuid) {
    let app = spawn_app_with(AppOptions::with_process_manager()).await;
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    if funds > 0 {
        app.deposit(&token, account, funds).await;
    }
    clock::travel_to(start);
    (app, token, account)
}

fn plan(amount: i64) -> Value {
    json!({ "name": format!("club {amount}"), "amount": amount, "currency": "EUR", "interval": "month" })
}

async fn subscribe(app: &TestApp, token: &str, account: Uuid, extra: Value) -> Uuid {
    let mut body = json!({ "account_id": account, "kind": "subscription", "plan": plan(PRICE) });
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    let created = app.post("/v1/payments", Some(token), &[], &body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    created.id("payment_id")
}

async fn post(app: &TestApp, token: &str, path: &str, body: Value) -> Reply {
    let reply = app.post(path, Some(token), &[], &body).await;
    assert_eq!(reply.status, StatusCode::OK, "{path}: {reply:?}");
    reply
}

async fn subscription(app: &TestApp, token: &str, id: Uuid) -> Value {
    let reply = app.get(&format!("/v1/payments/{id}"), token).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.body
}

async fn invoice_lines(app: &TestApp, token: &str, id: Uuid) -> Vec<Value> {
    let reply = app.get(&format!("/v1/payments/{id}/invoices"), token).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.body["lines"].as_array().cloned().unwrap_or_default()
}

/// Waits until the subscription's read model shows `check` true of it.
async fn until(
    app: &TestApp,
    token: &str,
    id: Uuid,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    eventually(what, || async {
        let reply = app.get(&format!("/v1/payments/{id}"), token).await;
        if reply.status == StatusCode::OK && check(&reply.body) {
            Ok(reply.body)
        } else {
            Err(format!("{reply:?}"))
        }
    })
    .await
}

async fn until_charged(app: &TestApp, token: &str, id: Uuid, periods: u64) -> Value {
    until(app, token, id, &format!("{periods} periods charged"), |s| {
        s["periods_charged"].as_u64() == Some(periods)
    })
    .await
}

/// The signed amounts the account's ledger holds, in order (deposits positive).
async fn ledger(app: &TestApp, account: Uuid) -> Vec<i64> {
    app.stream("Account", account)
        .await
        .into_iter()
        .filter_map(|(kind, payload)| {
            let amount = payload["amount"].as_i64()?;
            match kind.as_str() {
                "FundsDeposited" => Some(amount),
                "FundsWithdrawn" => Some(-amount),
                _ => None,
            }
        })
        .collect()
}

/// A monthly subscription started on 1 April 2027 on an account holding `funds`, its
/// first period charged, upgraded from 3,000 to 6,000 at midnight on 16 April (half the
/// period left).
async fn upgraded_mid_april(funds: i64) -> (TestApp, String, Uuid, Uuid) {
    let (app, token, account) = app_at(at(2027, 4, 1, 0), funds).await;
    let id = subscribe(&app, &token, account, json!({})).await;
    until_charged(&app, &token, id, 1).await;
    clock::travel_to(at(2027, 4, 16, 0));
    post(
        &app,
        &token,
        &format!("/v1/payments/{id}/change-plan"),
        json!({ "plan": plan(6_000) }),
    )
    .await;
    (app, token, account, id)
}

fn instant(value: &Value) -> DateTime<Utc> {
    value.as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monthly_plan_started_on_31_january_bills_on_28_february_and_31_march() {
    let start = at(2027, 1, 31, 10);
    let (app, token, account) = app_at(start, 100_000).await;
    let id = subscribe(&app, &token, account, json!({})).await;
    until_charged(&app, &token, id, 1).await;

    clock::travel_to(at(2027, 2, 28, 10) + Duration::seconds(1));
    until_charged(&app, &token, id, 2).await;
    clock::travel_to(at(2027, 3, 31, 10) + Duration::seconds(1));
    let charged = until_charged(&app, &token, id, 3).await;

    let lines = invoice_lines(&app, &token, id).await;
    let starts: Vec<(DateTime<Utc>, i64)> = lines
        .iter()
        .map(|l| {
            (
                instant(&l["period_start"]).with_nanosecond_zeroed(),
                l["amount"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        starts,
        vec![
            (at(2027, 1, 31, 10), PRICE),
            (at(2027, 2, 28, 10), PRICE),
            (at(2027, 3, 31, 10), PRICE),
        ],
        "{lines:?}"
    );
    assert_eq!(
        instant(&charged["next_charge_at"]).with_nanosecond_zeroed(),
        at(2027, 4, 30, 10)
    );
    assert_eq!(
        ledger(&app, account).await,
        vec![100_000, -PRICE, -PRICE, -PRICE]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trial_cancelled_before_its_end_is_never_charged() {
    let (app, token, account) = app_at(at(2027, 5, 1, 0), 100_000).await;
    let trial = subscribe(&app, &token, account, json!({ "trial_days": 14 })).await;
    until(&app, &token, trial, "trialing", |s| {
        s["status"] == "trialing"
    })
    .await;

    clock::travel_to(at(2027, 5, 6, 0));
    post(
        &app,
        &token,
        &format!("/v1/payments/{trial}/cancel"),
        json!({ "reason": "changed my mind" }),
    )
    .await;
    until(&app, &token, trial, "cancelled", |s| {
        s["status"] == "cancelled"
    })
    .await;

    // Long past the trial's end: a control subscription started then is charged, so the
    // scheduler has looked since; the cancelled trial never was.
    clock::travel_to(at(2027, 6, 1, 0));
    let control = subscribe(&app, &token, account, json!({})).await;
    until_charged(&app, &token, control, 1).await;
    assert!(invoice_lines(&app, &token, trial).await.is_empty());
    assert_eq!(ledger(&app, account).await, vec![100_000, -PRICE]);
    let view = subscription(&app, &token, trial).await;
    let reasons: Vec<&Value> = view["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["reason"])
        .collect();
    assert!(reasons.contains(&&json!("changed my mind")), "{view}");
    assert!(
        view["history"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["actor"] == "alice"),
        "{view}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_in_mid_period_charges_exactly_the_prorated_difference() {
    // April has 30 days: on the 16th at midnight half of the period is left.
    let (app, token, account, id) = upgraded_mid_april(100_000).await;
    eventually("the prorated difference charged", || async {
        let moved = ledger(&app, account).await;
        if moved.len() == 3 {
            Ok(())
        } else {
            Err(format!("{moved:?}"))
        }
    })
    .await;
    // Credit half of 3,000, charge half of 6,000: 1,500 more.
    assert_eq!(ledger(&app, account).await, vec![100_000, -PRICE, -1_500]);
    until(&app, &token, id, "on the new plan", |s| {
        s["plan"]["amount"] == 6_000
    })
    .await;
    let lines = invoice_lines(&app, &token, id).await;
    let kinds: Vec<(&str, i64)> = lines
        .iter()
        .map(|l| (l["kind"].as_str().unwrap(), l["amount"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("period_charge", PRICE),
            ("proration_credit", -1_500),
            ("proration_charge", 3_000)
        ]
    );

    // The next period is billed on the new plan.
    clock::travel_to(at(2027, 5, 1, 0) + Duration::seconds(1));
    until_charged(&app, &token, id, 2).await;
    assert_eq!(
        ledger(&app, account).await,
        vec![100_000, -PRICE, -1_500, -6_000]
    );
}

/// Waits until the account's ledger holds `n` movements, and returns them.
async fn until_moved(app: &TestApp, account: Uuid, n: usize) -> Vec<i64> {
    eventually(&format!("{n} movements on the account"), || async {
        let moved = ledger(app, account).await;
        if moved.len() == n {
            Ok(moved)
        } else {
            Err(format!("{moved:?}"))
        }
    })
    .await
}

async fn flow_statuses(app: &TestApp, id: Uuid, kind: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT status FROM pm_flows WHERE subject_id = $1 AND kind = $2")
        .bind(id)
        .bind(kind)
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_the_account_cannot_pay_is_carried_to_the_next_charge() {
    // Exactly April's price on the account: the upgrade's net of 1,500 is refused.
    let (app, token, account, id) = upgraded_mid_april(PRICE).await;
    let owing = until(&app, &token, id, "the net carried", |s| {
        s["balance_due"] == 1_500
    })
    .await;
    assert_eq!(owing["status"], "active");
    assert_eq!(owing["next_charge_amount"], 6_000 + 1_500);
    assert_eq!(
        flow_statuses(&app, id, "subscription-proration").await,
        vec!["carried"]
    );
    assert_eq!(ledger(&app, account).await, vec![PRICE, -PRICE]);

    // May's charge takes the new plan's price and the balance, in one withdrawal.
    app.deposit(&token, account, 7_500).await;
    clock::travel_to(at(2027, 5, 1, 0) + Duration::seconds(1));
    let charged = until_charged(&app, &token, id, 2).await;
    assert_eq!(charged["balance_due"], 0);
    assert_eq!(
        until_moved(&app, account, 4).await,
        vec![PRICE, -PRICE, 7_500, -7_500]
    );
    // The invoice says what was owed: the carry changed when it was paid, not what.
    let lines: Vec<(String, i64)> = invoice_lines(&app, &token, id)
        .await
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().unwrap().to_owned(),
                l["amount"].as_i64().unwrap(),
            )
        })
        .collect();
    let owed: i64 = lines.iter().map(|(_, amount)| amount).sum();
    assert_eq!(owed, PRICE + 7_500, "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_taken_as_the_subscription_is_cancelled_is_given_back() {
    let app = spawn_app_with(AppOptions::with_read_side()).await;
    let pause = PauseAfter::new("withdraw");
    let process = Arc::new(
        ProcessManager::new(app.commands.clone(), app.settings.process).observed_by(pause.clone()),
    );
    let (kafka, projector, shutdown) = (
        app.settings.kafka.clone(),
        app.settings.projector.clone(),
        app.shutdown.clone(),
    );
    tokio::spawn(async move { process.run(kafka, projector, shutdown).await });
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    app.deposit(&token, account, 100_000).await;
    clock::travel_to(at(2027, 4, 1, 0));
    let id = subscribe(&app, &token, account, json!({})).await;

    // April's charge is withdrawn; the subscription is cancelled before it is recorded.
    pause.reached().await;
    post(
        &app,
        &token,
        &format!("/v1/payments/{id}/cancel"),
        json!({ "at_period_end": false }),
    )
    .await;
    pause.release();

    // What was taken for a period that will not be recorded goes back.
    assert_eq!(
        until_moved(&app, account, 3).await,
        vec![100_000, -PRICE, PRICE]
    );
    eventually("the charge flow refunded", || async {
        let statuses = flow_statuses(&app, id, "subscription-charge").await;
        if statuses == ["refunded"] {
            Ok(())
        } else {
            Err(format!("{statuses:?}"))
        }
    })
    .await;
    let cancelled = until(&app, &token, id, "cancelled", |s| {
        s["status"] == "cancelled"
    })
    .await;
    assert_eq!(cancelled["periods_charged"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_at_period_end_charges_nothing_more() {
    let (app, token, account) = app_at(at(2027, 4, 1, 0), 100_000).await;
    let id = subscribe(&app, &token, account, json!({})).await;
    until_charged(&app, &token, id, 1).await;

    clock::travel_to(at(2027, 4, 10, 0));
    post(
        &app,
        &token,
        &format!("/v1/payments/{id}/cancel"),
        json!({}),
    )
    .await;
    let view = until(&app, &token, id, "its end scheduled", |s| {
        !s["cancel_at"].is_null()
    })
    .await;
    assert_eq!(
        instant(&view["cancel_at"]).with_nanosecond_zeroed(),
        at(2027, 5, 1, 0)
    );
    assert_eq!(view["status"], "active");

    clock::travel_to(at(2027, 5, 1, 0) + Duration::seconds(1));
    until(&app, &token, id, "ended", |s| s["status"] == "ended").await;
    assert_eq!(ledger(&app, account).await, vec![100_000, -PRICE]);
    assert_eq!(invoice_lines(&app, &token, id).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_now_refunds_the_unused_part_of_the_period() {
    let (app, token, account) = app_at(at(2027, 4, 1, 0), 100_000).await;
    let id = subscribe(&app, &token, account, json!({})).await;
    until_charged(&app, &token, id, 1).await;

    // Ten of thirty days left: a third of 3,000 comes back.
    clock::travel_to(at(2027, 4, 21, 0));
    post(
        &app,
        &token,
        &format!("/v1/payments/{id}/cancel"),
        json!({ "at_period_end": false }),
    )
    .await;
    until(&app, &token, id, "cancelled", |s| {
        s["status"] == "cancelled"
    })
    .await;
    eventually("the refund credited", || async {
        let moved = ledger(&app, account).await;
        if moved.len() == 3 {
            Ok(())
        } else {
            Err(format!("{moved:?}"))
        }
    })
    .await;
    assert_eq!(ledger(&app, account).await, vec![100_000, -PRICE, 1_000]);
    let last = invoice_lines(&app, &token, id).await.pop().unwrap();
    assert_eq!(
        (last["kind"].as_str(), last["amount"].as_i64()),
        (Some("refund"), Some(-1_000))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_shifts_the_next_charge() {
    let (app, token, account) = app_at(at(2027, 4, 1, 0), 100_000).await;
    let id = subscribe(&app, &token, account, json!({})).await;
    until_charged(&app, &token, id, 1).await;

    clock::travel_to(at(2027, 4, 11, 0));
    post(
        &app,
        &token,
        &format!("/v1/payments/{id}/pause"),
        json!({ "reason": "travelling" }),
    )
    .await;
    until(&app, &token, id, "paused", |s| s["status"] == "paused").await;
    clock::travel_to(at(2027, 4, 21, 0));
    post(
        &app,
        &token,
        &format!("/v1/payments/{id}/resume"),
        json!({}),
    )
    .await;
    // Paused ten days: the charge of 1 May moves to 11 May.
    let view = until(&app, &token, id, "resumed", |s| s["status"] == "active").await;
    let next = instant(&view["next_charge_at"]);
    assert!(
        (next - at(2027, 5, 11, 0)).num_seconds().abs() <= 1,
        "{view}"
    );

    // On 1 May nothing is charged: a control subscription charged then shows the
    // scheduler looked.
    clock::travel_to(at(2027, 5, 1, 0) + Duration::seconds(2));
    let control = subscribe(&app, &token, account, json!({})).await;
    until_charged(&app, &token, control, 1).await;
    assert_eq!(subscription(&app, &token, id).await["periods_charged"], 1);

    clock::travel_to(at(2027, 5, 11, 0) + Duration::seconds(2));
    until_charged(&app, &token, id, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_refused_charges_end_it_unpaid_and_a_deposit_before_the_last_retry_rescues_it() {
    let start = at(2027, 4, 1, 0);
    let (app, token, broke) = app_at(start, 0).await;
    let rescued_account = app.open_account(&token, "EUR", 0).await;
    clock::travel_to(start);
    let unpaid = subscribe(&app, &token, broke, json!({})).await;
    let rescued = subscribe(&app, &token, rescued_account, json!({})).await;
    for id in [unpaid, rescued] {
        until(&app, &token, id, "past due after the first refusal", |s| {
            s["status"] == "past_due" && s["failed_attempts"] == 1
        })
        .await;
    }
    // The second attempt a day later (CHRONICLE_SUBSCRIPTION_RETRY_HOURS: 24, 72).
    clock::travel_to(start + Duration::hours(24) + Duration::seconds(10));
    for id in [unpaid, rescued] {
        until(&app, &token, id, "refused twice", |s| {
            s["failed_attempts"] == 2
        })
        .await;
    }
    app.deposit(&token, rescued_account, 10_000).await;
    // The last attempt three days after that.
    clock::travel_to(start + Duration::hours(96) + Duration::seconds(40));
    let ended = until(&app, &token, unpaid, "cancelled as unpaid", |s| {
        s["status"] == "cancelled"
    })
    .await;
    let last = ended["history"]
        .as_array()
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    assert!(
        last["reason"].as_str().unwrap().starts_with("unpaid"),
        "{ended}"
    );
    let view = until_charged(&app, &token, rescued, 1).await;
    assert_eq!(view["status"], "active");
    assert_eq!(ledger(&app, broke).await, Vec::<i64>::new());
    assert_eq!(ledger(&app, rescued_account).await, vec![10_000, -PRICE]);
}

/// Sub-second parts dropped (periods keep the time of day of the start, to the
/// nanosecond; the tests name whole seconds).
trait Whole {
    fn with_nanosecond_zeroed(self) -> Self;
}

impl Whole for DateTime<Utc> {
    fn with_nanosecond_zeroed(self) -> Self {
        use chrono::Timelike;
        self.with_nanosecond(0).unwrap()
    }
}

/// Counts by status and MRR by currency, computed here from the subscriptions' events
/// recorded up to `t` (an independent fold: the domain's own `apply`, and MRR weights
/// written out: a year counts a twelfth, a week 52/12, rounded half up).
async fn from_events(app: &TestApp, t: DateTime<Utc>) -> (Value, Value) {
    use chronicle_domain::subscription::{Subscription, SubscriptionEvent, SubscriptionStatus};
    use std::collections::BTreeMap;
    let rows: Vec<(String, Value)> = sqlx::query_as(
        "SELECT aggregate_id, payload FROM events \
          WHERE aggregate_type = 'Subscription' AND recorded_at <= $1 \
          ORDER BY aggregate_id, sequence",
    )
    .bind(t)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let mut folded: BTreeMap<String, Subscription> = BTreeMap::new();
    for (id, payload) in rows {
        let event: SubscriptionEvent = serde_json::from_value(payload).unwrap();
        folded.entry(id).or_default().fold(event);
    }
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    let mut mrr: BTreeMap<String, i64> = BTreeMap::new();
    for state in folded.values().filter_map(Subscription::state) {
        *counts.entry(state.status.as_str().to_owned()).or_default() += 1;
        if matches!(
            state.status,
            SubscriptionStatus::Active | SubscriptionStatus::PastDue
        ) {
            let amount = i128::from(state.plan.price.amount);
            let (num, den) = match state.plan.interval.as_str() {
                "week" => (52, 12),
                "year" => (1, 12),
                _ => (1, 1),
            };
            let monthly = (2 * amount * num + den) / (2 * den);
            *mrr.entry(state.plan.price.currency.as_str().to_owned())
                .or_default() += i64::try_from(monthly).unwrap();
        }
    }
    let counts: Vec<Value> = counts
        .into_iter()
        .map(|(status, count)| json!({ "status": status, "count": count }))
        .collect();
    let mrr: Vec<Value> = mrr
        .into_iter()
        .filter(|(_, m)| *m != 0)
        .map(|(currency, mrr)| json!({ "currency": currency, "mrr": mrr }))
        .collect();
    (Value::from(counts), Value::from(mrr))
}

async fn database_now(app: &TestApp) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mrr_as_of_a_past_instant_equals_the_figure_from_the_events_up_to_it() {
    let (app, token, account) = app_at(at(2027, 4, 1, 0), 1_000_000).await;
    let analyst = app.token("ann", &[chronicle_domain::Role::Analyst]);
    let with_plan = |amount: i64, interval: &str| json!({ "plan": { "name": interval, "amount": amount, "currency": "EUR", "interval": interval } });
    let monthly = subscribe(&app, &token, account, json!({})).await;
    let yearly = subscribe(&app, &token, account, with_plan(12_000, "year")).await;
    let weekly = subscribe(&app, &token, account, with_plan(700, "week")).await;
    let trial = subscribe(&app, &token, account, json!({ "trial_days": 30 })).await;
    for id in [monthly, yearly, weekly] {
        until_charged(&app, &token, id, 1).await;
    }
    until(&app, &token, trial, "trialing", |s| {
        s["status"] == "trialing"
    })
    .await;
    let before = database_now(&app).await;

    // Before the weekly plan's second period (8 April), so no charge is due meanwhile.
    clock::travel_to(at(2027, 4, 5, 0));
    post(
        &app,
        &token,
        &format!("/v1/payments/{monthly}/change-plan"),
        json!({ "plan": plan(6_000) }),
    )
    .await;
    post(
        &app,
        &token,
        &format!("/v1/payments/{weekly}/pause"),
        json!({}),
    )
    .await;
    post(
        &app,
        &token,
        &format!("/v1/payments/{yearly}/cancel"),
        json!({ "at_period_end": false }),
    )
    .await;
    until(&app, &token, yearly, "cancelled", |s| {
        s["status"] == "cancelled"
    })
    .await;
    until(&app, &token, weekly, "paused", |s| s["status"] == "paused").await;
    until(&app, &token, monthly, "upgraded", |s| {
        s["plan"]["amount"] == 6_000
    })
    .await;
    let after = database_now(&app).await;

    for t in [before, after] {
        let reply = app
            .get_query(
                "/v1/analytics/subscriptions",
                &analyst,
                &[("as_of", t.to_rfc3339())],
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        let (counts, mrr) = from_events(&app, t).await;
        assert_eq!(reply.body["counts"], counts, "as of {t}");
        assert_eq!(reply.body["mrr"], mrr, "as of {t}");
    }
    // Per hour bucket around the changes: MRR at the bucket's end equals the figure from
    // the events up to then, and it moved from the start by new + expansion - contraction
    // - churned.
    let hour = Duration::hours(1);
    let reply = app
        .get_query(
            "/v1/analytics/mrr",
            &analyst,
            &[
                ("from", (before - hour).to_rfc3339()),
                ("to", (after + hour).to_rfc3339()),
                ("bucket", "hour".to_owned()),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let buckets = reply.body["buckets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!buckets.is_empty(), "{reply:?}");
    let eur = |mrr: &Value| {
        mrr.as_array()
            .and_then(|m| m.first())
            .map_or(0, |m| m["mrr"].as_i64().unwrap())
    };
    for bucket in &buckets {
        let starts = instant(&bucket["bucket"]);
        let at_start = eur(&from_events(&app, starts).await.1);
        let at_end = eur(&from_events(&app, starts + hour).await.1);
        let n = |field: &str| bucket[field].as_i64().unwrap();
        assert_eq!(n("mrr"), at_end, "{bucket}");
        assert_eq!(
            at_end - at_start,
            n("new") + n("expansion") - n("contraction") - n("churned"),
            "{bucket}"
        );
    }
    // Before: 3,000 + 1,000 (a twelfth of 12,000) + 3,033 (700 × 52/12); the trial counts
    // nothing. After: only the upgraded monthly plan.
    let before_mrr = from_events(&app, before).await.1;
    assert_eq!(before_mrr, json!([{ "currency": "EUR", "mrr": 7_033 }]));
    assert_eq!(
        from_events(&app, after).await.1,
        json!([{ "currency": "EUR", "mrr": 6_000 }])
    );
}

/// One version of a subscription in the MRR history, as the projector writes it.
async fn history(
    app: &TestApp,
    id: u128,
    sequence: i64,
    (status, currency, mrr): (&str, &str, i64),
    from: DateTime<Utc>,
    to: Option<DateTime<Utc>>,
) {
    sqlx::query(
        "INSERT INTO subscription_history \
             (subscription_id, sequence, status, currency, mrr, valid_from, valid_to) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(Uuid::from_u128(id))
    .bind(sequence)
    .bind(status)
    .bind(currency)
    .bind(mrr)
    .bind(from)
    .bind(to)
    .execute(&app.pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mrr_buckets_tell_new_expansion_contraction_and_churn_apart() {
    // No read side: the history is written here, months apart, as it would have been.
    let app = spawn_app_with(AppOptions::default()).await;
    let analyst = app.token("ann", &[chronicle_domain::Role::Analyst]);
    let day = |m, d| at(2027, m, d, 12);
    let rows = [
        // One subscription through every movement: new in January, up in February,
        // down in March, cancelled in April.
        (1, ("active", "EUR", 3_000), day(1, 10), Some(day(2, 10))),
        (1, ("active", "EUR", 6_000), day(2, 10), Some(day(3, 10))),
        (1, ("active", "EUR", 4_000), day(3, 10), Some(day(4, 10))),
        (1, ("cancelled", "EUR", 0), day(4, 10), None),
        // A trial that converts in February: new then, not in January.
        (2, ("trialing", "EUR", 0), day(1, 5), Some(day(2, 5))),
        (2, ("active", "EUR", 2_000), day(2, 5), None),
        // Paused and resumed within April: no movement at the month's ends.
        (3, ("active", "EUR", 1_000), day(2, 20), Some(day(4, 12))),
        (3, ("paused", "EUR", 0), day(4, 12), Some(day(4, 20))),
        (3, ("active", "EUR", 1_000), day(4, 20), None),
        // Another currency keeps its own figures.
        (4, ("active", "USD", 500), day(3, 1), None),
    ];
    let mut sequences = std::collections::HashMap::new();
    for (id, row, from, to) in rows {
        let sequence = sequences.entry(id).or_insert(0);
        *sequence += 1;
        history(&app, id, *sequence, row, from, to).await;
    }

    let reply = app
        .get_query(
            "/v1/analytics/mrr",
            &analyst,
            &[
                ("from", at(2027, 1, 1, 0).to_rfc3339()),
                ("to", at(2027, 5, 1, 0).to_rfc3339()),
                ("bucket", "month".to_owned()),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let rows: Vec<(u32, String, [i64; 5])> = reply.body["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let n = |field: &str| b[field].as_i64().unwrap();
            (
                chrono::Datelike::month(&instant(&b["bucket"])),
                b["currency"].as_str().unwrap().to_owned(),
                [
                    n("mrr"),
                    n("new"),
                    n("expansion"),
                    n("contraction"),
                    n("churned"),
                ],
            )
        })
        .collect();
    let eur = |month, figures| (month, "EUR".to_owned(), figures);
    let usd = |month, figures| (month, "USD".to_owned(), figures);
    //               mrr    new    expansion  contraction  churned
    assert_eq!(
        rows,
        vec![
            eur(1, [3_000, 3_000, 0, 0, 0]),
            eur(2, [9_000, 3_000, 3_000, 0, 0]),
            eur(3, [7_000, 0, 0, 2_000, 0]),
            usd(3, [500, 500, 0, 0, 0]),
            eur(4, [3_000, 0, 0, 0, 4_000]),
            usd(4, [500, 0, 0, 0, 0]),
        ]
    );
}
