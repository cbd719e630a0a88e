//! `bookings` and `booking_status_history`.

use std::collections::HashMap;

use chronicle_domain::BookingEvent;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::Tx;
use super::apply::{Fresh, Order, Tally};
use super::history::Versions;

/// What changes after a booking is requested.
#[derive(Clone, sqlx::FromRow)]
struct Status {
    booking_id: Uuid,
    version: i64,
    status: String,
    status_reason: Option<String>,
    payment_id: Option<Uuid>,
    updated_at: DateTime<Utc>,
    last_position: i64,
}

/// A booking first requested in this batch: what never changes afterwards.
struct Requested {
    account_id: Uuid,
    owner: String,
    resource_id: String,
    seats: Value,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    price_amount: i64,
    price_currency: String,
    guest_name: String,
    guest_email: String,
    notes: Option<String>,
    created_at: DateTime<Utc>,
    created_position: i64,
}

type Recorded = (String, Option<String>, Option<Uuid>);

pub(crate) async fn apply(
    tx: &mut Tx<'_>,
    events: &[Fresh<'_, BookingEvent>],
) -> Result<Tally, sqlx::Error> {
    if events.is_empty() {
        return Ok(Tally::default());
    }
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    let mut statuses: HashMap<Uuid, Status> = sqlx::query_as::<_, Status>(
        "SELECT booking_id, version, status, status_reason, payment_id, updated_at, last_position \
           FROM bookings WHERE booking_id = ANY($1) ORDER BY booking_id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .map(|s| (s.booking_id, s))
    .collect();
    let mut requested: HashMap<Uuid, Requested> = HashMap::new();
    let mut tally = Tally::default();
    let mut history: Versions<Recorded> = Versions::new();
    let mut dirty = Vec::new();
    for Fresh {
        envelope,
        id,
        event,
    } in events
    {
        let (seq, at, pos) = (
            envelope.sequence,
            envelope.recorded_at,
            envelope.global_position,
        );
        if !Order::of(statuses.get(id).map(|s| s.version), seq).admits(&mut tally, pos) {
            continue;
        }
        let (status, reason, payment_id) = match event.clone() {
            BookingEvent::BookingRequested {
                account_id,
                owner,
                resource_id,
                seats,
                starts_at,
                ends_at,
                price,
                guest,
                notes,
                ..
            } => {
                if statuses.contains_key(id) {
                    tally.stale += 1;
                    continue;
                }
                requested.insert(
                    *id,
                    Requested {
                        account_id,
                        owner,
                        resource_id,
                        seats: Value::from(seats),
                        starts_at,
                        ends_at,
                        price_amount: price.amount,
                        price_currency: price.currency.as_str().to_owned(),
                        guest_name: guest.name,
                        guest_email: guest.email,
                        notes,
                        created_at: at,
                        created_position: pos,
                    },
                );
                statuses.insert(
                    *id,
                    Status {
                        booking_id: *id,
                        version: seq - 1,
                        status: String::new(),
                        status_reason: None,
                        payment_id: None,
                        updated_at: at,
                        last_position: pos,
                    },
                );
                ("pending", None, None)
            }
            BookingEvent::BookingConfirmed { payment_id, .. } => {
                ("confirmed", None, Some(payment_id))
            }
            BookingEvent::BookingRejected { reason, .. } => ("rejected", Some(reason), None),
            BookingEvent::BookingCancelled { reason, .. } => ("cancelled", reason, None),
            BookingEvent::BookingExpired { .. } => ("expired", None, None),
        };
        let Some(state) = statuses.get_mut(id).filter(|s| s.version < seq) else {
            tally.stale += 1;
            continue;
        };
        state.status = status.to_owned();
        state.status_reason = reason.or(state.status_reason.take());
        state.payment_id = payment_id.or(state.payment_id);
        (state.version, state.updated_at, state.last_position) = (seq, at, pos);
        history.push(
            *id,
            seq,
            at,
            (
                state.status.clone(),
                state.status_reason.clone(),
                state.payment_id,
            ),
        );
        dirty.push(*id);
        tally.applied += 1;
    }
    dirty.sort();
    dirty.dedup();
    let (created, changed): (Vec<Uuid>, Vec<Uuid>) =
        dirty.into_iter().partition(|id| requested.contains_key(id));
    let created: Vec<(&Requested, &Status)> = created
        .iter()
        .map(|id| (&requested[id], &statuses[id]))
        .collect();
    let changed: Vec<&Status> = changed.iter().map(|id| &statuses[id]).collect();
    insert(tx, &created).await?;
    update(tx, &changed).await?;
    record_history(tx, &history).await?;
    Ok(tally)
}

async fn insert(tx: &mut Tx<'_>, created: &[(&Requested, &Status)]) -> Result<(), sqlx::Error> {
    if created.is_empty() {
        return Ok(());
    }
    let first = |f: fn(&Requested) -> String| created.iter().map(|(r, _)| f(r)).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO bookings (booking_id, account_id, owner, resource_id, seats, starts_at, \
         ends_at, price_amount, price_currency, guest_name, guest_email, notes, status, \
         status_reason, payment_id, version, created_at, updated_at, created_position, \
         last_position) \
         SELECT b.id, b.account_id, b.owner, b.resource_id, \
                ARRAY(SELECT jsonb_array_elements_text(b.seats)), b.starts_at, b.ends_at, \
                b.price_amount, b.price_currency, b.guest_name, b.guest_email, b.notes, b.status, \
                b.status_reason, b.payment_id, b.version, b.created_at, b.updated_at, \
                b.created_position, b.last_position \
           FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::jsonb[], \
                       $6::timestamptz[], $7::timestamptz[], $8::bigint[], $9::text[], \
                       $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], \
                       $15::uuid[], $16::bigint[], $17::timestamptz[], $18::timestamptz[], \
                       $19::bigint[], $20::bigint[]) \
             AS b(id, account_id, owner, resource_id, seats, starts_at, ends_at, price_amount, \
                  price_currency, guest_name, guest_email, notes, status, status_reason, \
                  payment_id, version, created_at, updated_at, created_position, last_position) \
         ON CONFLICT (booking_id) DO NOTHING",
    )
    .bind(
        created
            .iter()
            .map(|(_, s)| s.booking_id)
            .collect::<Vec<_>>(),
    )
    .bind(
        created
            .iter()
            .map(|(r, _)| r.account_id)
            .collect::<Vec<_>>(),
    )
    .bind(first(|r| r.owner.clone()))
    .bind(first(|r| r.resource_id.clone()))
    .bind(
        created
            .iter()
            .map(|(r, _)| r.seats.clone())
            .collect::<Vec<_>>(),
    )
    .bind(created.iter().map(|(r, _)| r.starts_at).collect::<Vec<_>>())
    .bind(created.iter().map(|(r, _)| r.ends_at).collect::<Vec<_>>())
    .bind(
        created
            .iter()
            .map(|(r, _)| r.price_amount)
            .collect::<Vec<_>>(),
    )
    .bind(first(|r| r.price_currency.clone()))
    .bind(first(|r| r.guest_name.clone()))
    .bind(first(|r| r.guest_email.clone()))
    .bind(
        created
            .iter()
            .map(|(r, _)| r.notes.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        created
            .iter()
            .map(|(_, s)| s.status.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        created
            .iter()
            .map(|(_, s)| s.status_reason.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        created
            .iter()
            .map(|(_, s)| s.payment_id)
            .collect::<Vec<_>>(),
    )
    .bind(created.iter().map(|(_, s)| s.version).collect::<Vec<_>>())
    .bind(
        created
            .iter()
            .map(|(r, _)| r.created_at)
            .collect::<Vec<_>>(),
    )
    .bind(
        created
            .iter()
            .map(|(_, s)| s.updated_at)
            .collect::<Vec<_>>(),
    )
    .bind(
        created
            .iter()
            .map(|(r, _)| r.created_position)
            .collect::<Vec<_>>(),
    )
    .bind(
        created
            .iter()
            .map(|(_, s)| s.last_position)
            .collect::<Vec<_>>(),
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes the new status of bookings that existed before the batch.
async fn update(tx: &mut Tx<'_>, changed: &[&Status]) -> Result<(), sqlx::Error> {
    if changed.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE bookings b SET status = v.status, status_reason = v.status_reason, \
                payment_id = v.payment_id, version = v.version, updated_at = v.updated_at, \
                last_position = v.last_position \
           FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::bigint[], \
                       $6::timestamptz[], $7::bigint[]) \
             AS v(id, status, status_reason, payment_id, version, updated_at, last_position) \
          WHERE b.booking_id = v.id AND b.version < v.version",
    )
    .bind(changed.iter().map(|s| s.booking_id).collect::<Vec<_>>())
    .bind(changed.iter().map(|s| s.status.clone()).collect::<Vec<_>>())
    .bind(
        changed
            .iter()
            .map(|s| s.status_reason.clone())
            .collect::<Vec<_>>(),
    )
    .bind(changed.iter().map(|s| s.payment_id).collect::<Vec<_>>())
    .bind(changed.iter().map(|s| s.version).collect::<Vec<_>>())
    .bind(changed.iter().map(|s| s.updated_at).collect::<Vec<_>>())
    .bind(changed.iter().map(|s| s.last_position).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn record_history(tx: &mut Tx<'_>, history: &Versions<Recorded>) -> Result<(), sqlx::Error> {
    if history.rows.is_empty() {
        return Ok(());
    }
    history
        .close_current(tx, "booking_status_history", "booking_id")
        .await?;
    sqlx::query(
        "INSERT INTO booking_status_history (booking_id, sequence, status, status_reason, \
         payment_id, valid_from, valid_to) \
         SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::uuid[], \
                              $6::timestamptz[], $7::timestamptz[]) \
         ON CONFLICT (booking_id, sequence) DO NOTHING",
    )
    .bind(history.ids())
    .bind(history.sequences())
    .bind(history.column(|r| r.0.clone()))
    .bind(history.column(|r| r.1.clone()))
    .bind(history.column(|r| r.2))
    .bind(history.valid_froms())
    .bind(history.valid_to())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
