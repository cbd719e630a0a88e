//! What subscription queries read (ADR 0034): a subscription with its period in
//! progress, next charge and history; its invoice lines; and, for analysts, counts and
//! monthly recurring revenue as of an instant and over time buckets. Read tables only:
//! `subscriptions`, `subscription_invoices`, `subscription_history` and the journal of
//! applied events (`rm_applied_events`, for a subscription's history).

use chronicle_domain::subscription::Subscription;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::temporal::Bucket;

/// A plan as the API shows it.
#[derive(Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct PlanView {
    pub name: String,
    /// Minor units per period.
    pub amount: i64,
    pub currency: String,
    /// `week`, `month` or `year`.
    pub interval: String,
}

impl From<&chronicle_domain::subscription::Plan> for PlanView {
    fn from(plan: &chronicle_domain::subscription::Plan) -> Self {
        Self {
            name: plan.name.clone(),
            amount: plan.price.amount,
            currency: plan.price.currency.as_str().to_owned(),
            interval: plan.interval.as_str().to_owned(),
        }
    }
}

/// A billing period: `[starts_at, ends_at)`, numbered from 0 at the anchor.
#[derive(Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct PeriodView {
    pub number: u32,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
}

/// A plan change that takes effect when period `from_period` starts.
#[derive(Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ScheduledPlanView {
    pub plan: PlanView,
    pub from_period: u32,
}

/// One change of a subscription, as recorded: its event, who made it and why.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ChangeView {
    pub sequence: i64,
    /// The event's type (`SubscriptionStarted`, `PlanChanged`, `SubscriptionPaused`, …).
    #[sqlx(rename = "event_type")]
    #[serde(rename = "type")]
    pub kind: String,
    pub recorded_at: DateTime<Utc>,
    pub actor: Option<String>,
    pub reason: Option<String>,
    /// The event's own fields.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

/// A subscription as the API shows it: the third kind of payment.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SubscriptionView {
    pub payment_id: Uuid,
    /// Always `subscription`.
    pub kind: &'static str,
    pub account_id: Uuid,
    pub owner: String,
    /// `trialing`, `active`, `past_due`, `paused`, `cancelled` or `ended`.
    pub status: String,
    pub plan: PlanView,
    /// The start of period 0 (the end of the trial, if any), moved by pauses.
    pub anchor: DateTime<Utc>,
    /// The period in progress now (while paused: when it was paused); none once
    /// cancelled or ended.
    pub current_period: Option<PeriodView>,
    pub periods_charged: u32,
    /// When the next charge (or the retry of a refused one) falls due.
    pub next_charge_at: Option<DateTime<Utc>>,
    /// What it will take: the period's price and the balance due.
    pub next_charge_amount: Option<i64>,
    /// Owed and not yet collected: plan changes' nets the account refused, collected
    /// with the next charge (or settled by a cancellation's refund).
    pub balance_due: i64,
    /// Refused attempts of the charge now due.
    pub failed_attempts: u32,
    /// When a cancellation at period end takes effect.
    pub cancel_at: Option<DateTime<Utc>>,
    pub paused_at: Option<DateTime<Utc>>,
    pub scheduled_plan: Option<ScheduledPlanView>,
    pub history: Vec<ChangeView>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct Row {
    state: serde_json::Value,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// Subscription `id` as of `now` (for its period in progress), with its history; `None`
/// when there is none.
pub async fn subscription(
    pool: &PgPool,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<SubscriptionView>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT state, version, created_at, updated_at FROM subscriptions \
          WHERE subscription_id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let aggregate: Subscription = serde_json::from_value(row.state)
        .map_err(|e| sqlx::Error::Decode(format!("subscription {id} state: {e}").into()))?;
    let Some(state) = aggregate.state() else {
        return Ok(None);
    };
    let current_period = (!state.status.is_final())
        .then(|| {
            let at = state.paused_at.unwrap_or(now).max(state.anchor);
            state.plan.interval.period_at(state.anchor, at)
        })
        .flatten()
        .map(|(number, starts_at, ends_at)| PeriodView {
            number,
            starts_at,
            ends_at,
        });
    let history = history(pool, id).await?;
    Ok(Some(SubscriptionView {
        payment_id: id,
        kind: "subscription",
        account_id: state.account_id,
        owner: state.owner.clone(),
        status: state.status.as_str().to_owned(),
        plan: PlanView::from(&state.plan),
        anchor: state.anchor,
        current_period,
        periods_charged: state.periods_charged,
        next_charge_at: state.next_charge_at(),
        next_charge_amount: state
            .next_charge_at()
            .and_then(|_| state.next_charge().total()),
        balance_due: state.balance_due,
        failed_attempts: state
            .failed_attempts
            .get(&state.next_period())
            .copied()
            .unwrap_or(0),
        cancel_at: state.ends_at,
        paused_at: state.paused_at,
        scheduled_plan: state.scheduled_plan.as_ref().map(|(from_period, plan)| {
            ScheduledPlanView {
                plan: PlanView::from(plan),
                from_period: *from_period,
            }
        }),
        history,
        version: row.version,
        created_at: row.created_at,
        updated_at: row.updated_at,
    }))
}

/// The changes of subscription `id` in order, from the journal of applied events.
async fn history(pool: &PgPool, id: Uuid) -> Result<Vec<ChangeView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT sequence, event_type, recorded_at, metadata->>'actor' AS actor, \
                payload->>'reason' AS reason, payload - 'type' AS details \
           FROM rm_applied_events \
          WHERE aggregate_type = 'Subscription' AND aggregate_id = $1 \
          ORDER BY sequence",
    )
    .bind(id)
    .fetch_all(pool)
    .await
}

/// One line of a subscription's invoices.
#[derive(Debug, Serialize, sqlx::FromRow, PartialEq, Eq, utoipa::ToSchema)]
pub struct InvoiceLine {
    /// `period_charge`, `proration_credit`, `proration_charge` or `refund`.
    pub kind: String,
    pub period: i32,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// Minor units: positive owed by the subscriber, negative credited to them.
    pub amount: i64,
    pub currency: String,
    pub plan_name: String,
    pub recorded_at: DateTime<Utc>,
    /// The subscription's version that made the line.
    pub sequence: i64,
}

/// The invoice lines of subscription `id` in the order they were made.
pub async fn invoices(pool: &PgPool, id: Uuid) -> Result<Vec<InvoiceLine>, sqlx::Error> {
    sqlx::query_as(
        "SELECT kind, period, period_start, period_end, amount, currency, plan_name, \
                recorded_at, sequence \
           FROM subscription_invoices WHERE subscription_id = $1 ORDER BY sequence, line",
    )
    .bind(id)
    .fetch_all(pool)
    .await
}

/// Subscriptions with something due at `now`, most overdue first: a charge (or its
/// retry), or a cancellation at period end that has taken effect. The scheduler decides
/// on the aggregate; this only finds candidates.
pub async fn due(pool: &PgPool, now: DateTime<Utc>, limit: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT subscription_id FROM ( \
             (SELECT subscription_id, next_charge_at AS due FROM subscriptions \
               WHERE next_charge_at <= $1 ORDER BY next_charge_at LIMIT $2) \
             UNION \
             (SELECT subscription_id, ends_at AS due FROM subscriptions \
               WHERE ends_at <= $1 AND status NOT IN ('cancelled', 'ended') \
               ORDER BY ends_at LIMIT $2)) AS d \
          GROUP BY subscription_id ORDER BY min(due) LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The owner of subscription `id`, if there is one.
pub async fn owner(pool: &PgPool, id: Uuid) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT owner FROM subscriptions WHERE subscription_id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// Subscriptions in one status as of an instant.
#[derive(Debug, Serialize, sqlx::FromRow, PartialEq, Eq, utoipa::ToSchema)]
pub struct StatusCount {
    pub status: String,
    pub count: i64,
}

/// Monthly recurring revenue in one currency.
#[derive(Debug, Serialize, sqlx::FromRow, PartialEq, Eq, utoipa::ToSchema)]
pub struct Mrr {
    pub currency: String,
    /// Minor units a month: monthly plans count their amount, yearly a twelfth, weekly
    /// 52/12 (each rounded half up); only active and past-due subscriptions count.
    pub mrr: i64,
}

/// Counts by status and MRR by currency as of transaction time `at`.
pub async fn as_of(
    pool: &PgPool,
    at: DateTime<Utc>,
) -> Result<(Vec<StatusCount>, Vec<Mrr>), sqlx::Error> {
    let counts = sqlx::query_as(
        "SELECT status, count(*) AS count FROM subscription_history \
          WHERE valid_from <= $1 AND (valid_to IS NULL OR valid_to > $1) \
          GROUP BY status ORDER BY status",
    )
    .bind(at)
    .fetch_all(pool)
    .await?;
    let mrr = sqlx::query_as(
        "SELECT currency, sum(mrr)::bigint AS mrr FROM subscription_history \
          WHERE valid_from <= $1 AND (valid_to IS NULL OR valid_to > $1) \
          GROUP BY currency HAVING sum(mrr) <> 0 ORDER BY currency",
    )
    .bind(at)
    .fetch_all(pool)
    .await?;
    Ok((counts, mrr))
}

/// MRR at the end of one bucket, and how it moved during the bucket, in one currency.
/// Each subscription's MRR at the bucket's start and end decides its movement: from
/// zero to some is new, up is expansion, down (not to zero) is contraction, to zero is
/// churn; so `mrr` at the end = at the start + new + expansion - contraction - churned.
#[derive(Debug, Serialize, sqlx::FromRow, PartialEq, Eq, utoipa::ToSchema)]
pub struct MrrBucket {
    /// The bucket's start (UTC).
    pub bucket: DateTime<Utc>,
    pub currency: String,
    pub mrr: i64,
    pub new: i64,
    pub expansion: i64,
    pub contraction: i64,
    pub churned: i64,
}

/// MRR and its movements per bucket (aligned on UTC hours, days or months) overlapping
/// `[from, to)`, per currency.
pub async fn mrr_buckets(
    pool: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    bucket: Bucket,
) -> Result<Vec<MrrBucket>, sqlx::Error> {
    sqlx::query_as(
        "WITH bounds AS ( \
             SELECT b AS starts, b + ('1 ' || $3)::interval AS ends \
               FROM generate_series(date_trunc($3, $1, 'UTC'), $2 - interval '1 microsecond', \
                                    ('1 ' || $3)::interval) AS b), \
         at_start AS ( \
             SELECT bounds.starts, h.subscription_id, h.currency, h.mrr \
               FROM bounds JOIN subscription_history h \
                 ON h.valid_from <= bounds.starts \
                AND (h.valid_to IS NULL OR h.valid_to > bounds.starts)), \
         at_end AS ( \
             SELECT bounds.starts, h.subscription_id, h.currency, h.mrr \
               FROM bounds JOIN subscription_history h \
                 ON h.valid_from <= bounds.ends \
                AND (h.valid_to IS NULL OR h.valid_to > bounds.ends)), \
         moved AS ( \
             SELECT coalesce(e.starts, s.starts) AS bucket, \
                    coalesce(e.currency, s.currency) AS currency, \
                    coalesce(s.mrr, 0) AS before, coalesce(e.mrr, 0) AS after \
               FROM at_start s FULL JOIN at_end e \
                 ON e.starts = s.starts AND e.subscription_id = s.subscription_id) \
         SELECT bucket, currency, \
                sum(after)::bigint AS mrr, \
                coalesce(sum(after) FILTER (WHERE before = 0 AND after > 0), 0)::bigint AS \"new\", \
                coalesce(sum(after - before) FILTER (WHERE before > 0 AND after > before), 0)::bigint \
                    AS expansion, \
                coalesce(sum(before - after) FILTER (WHERE after > 0 AND after < before), 0)::bigint \
                    AS contraction, \
                coalesce(sum(before) FILTER (WHERE before > 0 AND after = 0), 0)::bigint AS churned \
           FROM moved GROUP BY bucket, currency \
         HAVING sum(after) <> 0 OR sum(before) <> 0 \
          ORDER BY bucket, currency",
    )
    .bind(from)
    .bind(to)
    .bind(bucket.as_str())
    .fetch_all(pool)
    .await
}
