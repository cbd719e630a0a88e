//! The timed side of the process manager: recurring charges that fall due (and
//! subscriptions', in `subscription.rs`), and pending bookings whose hold has run out. Both find their work in read models and act through
//! idempotent commands, so two instances never charge twice; a session advisory lock per
//! payment only keeps them from doing the same work at once.
//!
//! The lock is deliberately not a row lock: `FOR UPDATE` gives the transaction an xid,
//! and the relay publishes nothing committed after the oldest running xid, so a
//! transaction held open while commands run would stall every event of the tick.
//! Advisory locks taken outside a transaction hold neither an xid nor a snapshot.

use chronicle_domain::values::Note;
use chronicle_domain::{
    BookingCommand, Currency, DomainError, Issued, Money, PaymentCommand, PaymentStatus,
};
use chronicle_eventstore::clock;
use chrono::{DateTime, Utc};
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::flow::{Flow, FlowKind, FlowStatus, ProcessError, Step};
use super::{ProcessManager, ProcessSettings};
use chronicle_projections::queries::{self, DueCharge};

fn issued<C>(command: C) -> Issued<C> {
    Issued::new(ProcessManager::actor(), clock::now(), command)
}

impl ProcessManager {
    /// Charges what is due and expires stale holds every tick, until shutdown.
    pub async fn run_schedules(&self, shutdown: CancellationToken) {
        loop {
            if let Err(error) = self.charge_due().await {
                tracing::warn!(%error, "charging due payments failed; retrying next tick");
            }
            if let Err(error) = self.charge_due_subscriptions().await {
                tracing::warn!(%error, "charging due subscriptions failed; retrying next tick");
            }
            if let Err(error) = self.expire_holds().await {
                tracing::warn!(%error, "expiring bookings failed; retrying next tick");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.settings.tick) => {}
            }
        }
    }

    /// Charges every recurring payment whose next charge is due (up to 50 a tick) and
    /// returns how many it took on; a payment another instance is charging is skipped.
    pub async fn charge_due(&self) -> Result<usize, ProcessError> {
        // The schedules are a read model; the projections crate owns their queries.
        let due = queries::due_charges(&self.pool, 50).await?;
        if due.is_empty() {
            return Ok(0);
        }
        let mut locks = ChargeLocks::new(self.pool.acquire().await?);
        let mut taken = 0;
        for charge in &due {
            if !locks.try_lock(charge.payment_id).await? {
                continue;
            }
            taken += 1;
            self.charge(charge).await?;
            locks.unlock(charge.payment_id).await?;
        }
        Ok(taken)
    }

    async fn charge(&self, due: &DueCharge) -> Result<(), ProcessError> {
        let n = due.next_charge as u32;
        let payment = self.commands.load_payment(due.payment_id).await?;
        let Some(state) = payment.state() else {
            return Ok(());
        };
        // The read model may lag behind the payment: ask the aggregate.
        if state.status != PaymentStatus::Active || state.charges_captured >= n {
            return Ok(());
        }
        // A failed attempt the read model has not applied yet moved the due time: another
        // instance tried this charge after our list was read. Not due yet.
        if state.failed_attempts.get(&n).copied().unwrap_or(0) > due.attempts.max(0) as u32 {
            return Ok(());
        }
        let flow_id = Uuid::new_v5(&due.payment_id, format!("charge/{n}").as_bytes());
        let flow = self
            .flow(flow_id, FlowKind::RecurringCharge, due.payment_id)
            .await?;
        let Ok(currency) = Currency::try_from(due.currency.clone()) else {
            return flow
                .finish(
                    FlowStatus::Stuck,
                    Some(format!("currency {:?}", due.currency)),
                )
                .await;
        };
        let money = Money {
            amount: due.amount,
            currency,
        };
        match self
            .debit(&flow, due.account_id, money, flow_id, "withdraw")
            .await?
        {
            Step::Done => self.capture_charge(&flow, due.payment_id, n).await,
            Step::Refused(refusal) => {
                let attempt = state
                    .failed_attempts
                    .get(&n)
                    .copied()
                    .unwrap_or(0)
                    .max(due.attempts as u32)
                    + 1;
                self.fail_charge(&flow, due.payment_id, n, attempt, &refusal)
                    .await
            }
        }
    }

    /// Captures charge `n` of a payment whose money was withdrawn.
    async fn capture_charge(
        &self,
        flow: &Flow<'_>,
        payment_id: Uuid,
        n: u32,
    ) -> Result<(), ProcessError> {
        match self.capture(flow, payment_id, n).await? {
            Step::Done => flow.finish(FlowStatus::Captured, None).await,
            Step::Refused(refusal) => {
                flow.finish(FlowStatus::Stuck, Some(refusal.to_string()))
                    .await
            }
        }
    }

    /// Records that attempt `attempt` at charge `n` failed, with when to try again, if at
    /// all (the payment is suspended after the last).
    async fn fail_charge(
        &self,
        flow: &Flow<'_>,
        payment_id: Uuid,
        n: u32,
        attempt: u32,
        refusal: &DomainError,
    ) -> Result<(), ProcessError> {
        let retry_at = self.retry_at(attempt);
        let command = PaymentCommand::FailCharge {
            charge: n,
            attempt,
            reason: Note::reason(refusal.code()),
            retry_at,
        };
        let step = format!("fail-{attempt}");
        flow.step(&step, |m| async move {
            self.commands.payment(payment_id, issued(command), &m).await
        })
        .await?;
        let status = if retry_at.is_some() {
            FlowStatus::Retrying
        } else {
            FlowStatus::Suspended
        };
        flow.finish(
            status,
            Some(format!("attempt {attempt}: {}", refusal.code())),
        )
        .await
    }

    /// When attempt `attempt + 1` is due, or `None` when `attempt` was the last.
    fn retry_at(&self, attempt: u32) -> Option<DateTime<Utc>> {
        let wait = retry_delay(&self.settings, attempt)?;
        Some(clock::now() + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX))
    }

    /// Expires pending bookings older than the hold time; their seats are released.
    pub async fn expire_holds(&self) -> Result<usize, ProcessError> {
        let stale =
            queries::bookings_pending_longer_than(&self.pool, self.settings.booking_hold, 100)
                .await?;
        for booking_id in &stale {
            let flow_id = Uuid::new_v5(booking_id, b"expire");
            let flow = self
                .flow(flow_id, FlowKind::BookingExpiry, *booking_id)
                .await?;
            let booking_id = *booking_id;
            match flow
                .step("expire", |m| async move {
                    self.commands
                        .booking(booking_id, issued(BookingCommand::ExpireBooking), &m)
                        .await
                })
                .await?
            {
                Step::Done => flow.finish(FlowStatus::Expired, None).await?,
                // Confirmed or rejected since the read model last looked.
                Step::Refused(refusal) => {
                    flow.finish(FlowStatus::Skipped, Some(refusal.to_string()))
                        .await?
                }
            }
        }
        Ok(stale.len())
    }
}

/// One pooled connection holding at most one advisory lock per due payment at a time.
///
/// Dropped while a lock may be held (an error, a cancelled tick), the connection is
/// closed instead of going back to the pool, and the server releases the lock with the
/// session.
pub(super) struct ChargeLocks {
    conn: PoolConnection<Postgres>,
    may_hold: bool,
}

impl ChargeLocks {
    pub(super) fn new(conn: PoolConnection<Postgres>) -> Self {
        Self {
            conn,
            may_hold: false,
        }
    }

    fn key(payment_id: Uuid) -> String {
        format!("chronicle.charge/{payment_id}")
    }

    /// Takes the payment's (or subscription's) lock if no other instance holds it.
    pub(super) async fn try_lock(&mut self, payment_id: Uuid) -> Result<bool, sqlx::Error> {
        self.may_hold = true;
        let acquired: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                .bind(Self::key(payment_id))
                .fetch_one(&mut *self.conn)
                .await?;
        self.may_hold = acquired;
        Ok(acquired)
    }

    pub(super) async fn unlock(&mut self, payment_id: Uuid) -> Result<(), sqlx::Error> {
        let released: bool =
            sqlx::query_scalar("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
                .bind(Self::key(payment_id))
                .fetch_one(&mut *self.conn)
                .await?;
        // `false` means this session did not hold it, which it should have: do not trust
        // the connection back to the pool.
        self.may_hold = !released;
        Ok(())
    }
}

impl Drop for ChargeLocks {
    fn drop(&mut self) {
        if self.may_hold {
            self.conn.close_on_drop();
        }
    }
}

/// How long after failed attempt `attempt` (from 1) the next one is due: the retry
/// interval, doubled for each attempt after the first; `None` after the last attempt.
fn retry_delay(settings: &ProcessSettings, attempt: u32) -> Option<std::time::Duration> {
    if attempt >= settings.charge_max_attempts {
        return None;
    }
    Some(settings.charge_retry * 2u32.saturating_pow(attempt.saturating_sub(1)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn retries_double_from_the_interval_until_the_last_attempt() {
        let settings = ProcessSettings {
            charge_max_attempts: 4,
            charge_retry: Duration::from_secs(60),
            ..ProcessSettings::default()
        };
        let delays: Vec<_> = (1..=5).map(|a| retry_delay(&settings, a)).collect();
        assert_eq!(
            delays,
            [
                Some(Duration::from_secs(60)),
                Some(Duration::from_secs(120)),
                Some(Duration::from_secs(240)),
                None,
                None
            ]
        );
    }

    #[test]
    fn a_huge_attempt_number_saturates_instead_of_overflowing() {
        let settings = ProcessSettings {
            charge_max_attempts: u32::MAX,
            charge_retry: Duration::from_millis(1),
            ..ProcessSettings::default()
        };
        assert!(retry_delay(&settings, 200).is_some());
    }
}
