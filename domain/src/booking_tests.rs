use chrono::{DateTime, Duration, TimeZone, Utc};
use cqrs_es::test::TestFramework;
use proptest::prelude::*;

use super::*;
use crate::actor::{Actor, Role};
use crate::money::{Amount, Currency};

type BookingTest = TestFramework<Booking>;

const BOOKING: Uuid = Uuid::from_u128(0xb00c);
const ACCOUNT: Uuid = Uuid::from_u128(0xacc0);
const PAYMENT: Uuid = Uuid::from_u128(0xa1);

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 1, 12, 0, 0).unwrap()
}

fn starts() -> DateTime<Utc> {
    now() + Duration::days(7)
}

fn by_alice_at(at: DateTime<Utc>, command: BookingCommand) -> Issued<BookingCommand> {
    Issued::new(Actor::new("alice", [Role::Client]), at, command)
}

fn by_alice(command: BookingCommand) -> Issued<BookingCommand> {
    by_alice_at(now(), command)
}

fn price() -> Money {
    Money::new(
        Amount::new("price", 4_500).unwrap(),
        Currency::parse("EUR").unwrap(),
    )
}

fn request(starts_at: DateTime<Utc>, ends_at: DateTime<Utc>) -> BookingCommand {
    BookingCommand::RequestBooking(Box::new(BookingRequest {
        booking_id: BOOKING,
        account_id: ACCOUNT,
        owner: "alice".into(),
        resource_id: ResourceId::parse("hall-1").unwrap(),
        seats: Seats::parse(&["A1".to_owned(), "A2".to_owned()]).unwrap(),
        starts_at,
        ends_at,
        price: price(),
        guest: Guest::parse("Zoë Adams", "zoe@example.org").unwrap(),
        notes: Some(Note::parse("notes", "window seats").unwrap()),
    }))
}

fn requested() -> BookingEvent {
    BookingEvent::BookingRequested {
        booking_id: BOOKING,
        account_id: ACCOUNT,
        owner: "alice".into(),
        resource_id: "hall-1".into(),
        seats: vec!["A1".into(), "A2".into()],
        starts_at: starts(),
        ends_at: starts() + Duration::hours(2),
        price: price(),
        guest: Guest::parse("Zoë Adams", "zoe@example.org").unwrap(),
        notes: Some("window seats".into()),
        requested_at: now(),
    }
}

fn confirmed() -> BookingEvent {
    BookingEvent::BookingConfirmed {
        payment_id: PAYMENT,
        confirmed_at: now(),
    }
}

fn reason(text: &str) -> Note {
    Note::parse("reason", text).unwrap()
}

#[test]
fn a_request_for_a_future_range_is_pending() {
    BookingTest::with(())
        .given_no_previous_events()
        .when(by_alice(request(starts(), starts() + Duration::hours(2))))
        .then_expect_events(vec![requested()]);
}

#[test]
fn a_request_in_the_past_or_for_an_empty_range_is_invalid() {
    for (starts_at, ends_at) in [
        (now() - Duration::hours(1), now() + Duration::hours(1)),
        (now(), now() + Duration::hours(1)),
        (starts(), starts()),
        (starts(), starts() - Duration::minutes(1)),
        (starts(), starts() + Duration::days(MAX_DURATION_DAYS + 1)),
    ] {
        let error = BookingTest::with(())
            .given_no_previous_events()
            .when(by_alice(request(starts_at, ends_at)))
            .inspect_result()
            .unwrap_err();
        assert_eq!(
            error.code(),
            "validation_failed",
            "{starts_at} .. {ends_at}"
        );
    }
}

#[test]
fn a_booking_id_cannot_be_requested_twice() {
    BookingTest::with(())
        .given(vec![requested()])
        .when(by_alice(request(starts(), starts() + Duration::hours(2))))
        .then_expect_error(DomainError::AlreadyExists);
}

#[test]
fn a_client_cannot_book_on_someone_elses_account() {
    let bob = Issued::new(
        Actor::new("bob", [Role::Client]),
        now(),
        request(starts(), starts() + Duration::hours(2)),
    );
    BookingTest::with(())
        .given_no_previous_events()
        .when(bob)
        .then_expect_error(DomainError::NotFound);
}

#[test]
fn a_pending_booking_can_be_confirmed_rejected_or_expired() {
    BookingTest::with(())
        .given(vec![requested()])
        .when(by_alice(BookingCommand::ConfirmBooking {
            payment_id: PAYMENT,
        }))
        .then_expect_events(vec![confirmed()]);
    BookingTest::with(())
        .given(vec![requested()])
        .when(by_alice(BookingCommand::RejectBooking {
            reason: reason("insufficient funds"),
        }))
        .then_expect_events(vec![BookingEvent::BookingRejected {
            reason: "insufficient funds".into(),
            rejected_at: now(),
        }]);
    BookingTest::with(())
        .given(vec![requested()])
        .when(by_alice(BookingCommand::ExpireBooking))
        .then_expect_events(vec![BookingEvent::BookingExpired { expired_at: now() }]);
}

#[test]
fn illegal_transitions_are_typed_errors() {
    let rejected = BookingEvent::BookingRejected {
        reason: "no".into(),
        rejected_at: now(),
    };
    BookingTest::with(())
        .given(vec![requested(), rejected.clone()])
        .when(by_alice(BookingCommand::ConfirmBooking {
            payment_id: PAYMENT,
        }))
        .then_expect_error(DomainError::InvalidTransition {
            status: "rejected",
            action: "confirm",
        });
    BookingTest::with(())
        .given(vec![requested(), confirmed()])
        .when(by_alice(BookingCommand::ExpireBooking))
        .then_expect_error(DomainError::InvalidTransition {
            status: "confirmed",
            action: "expire",
        });
    BookingTest::with(())
        .given(vec![requested(), rejected])
        .when(by_alice(BookingCommand::CancelBooking { reason: None }))
        .then_expect_error(DomainError::InvalidTransition {
            status: "rejected",
            action: "cancel",
        });
    BookingTest::with(())
        .given(vec![requested(), confirmed()])
        .when(by_alice(BookingCommand::RejectBooking {
            reason: reason("late"),
        }))
        .then_expect_error(DomainError::InvalidTransition {
            status: "confirmed",
            action: "reject",
        });
}

#[test]
fn repeating_a_transition_already_made_is_a_no_op() {
    BookingTest::with(())
        .given(vec![requested(), confirmed()])
        .when(by_alice(BookingCommand::ConfirmBooking {
            payment_id: PAYMENT,
        }))
        .then_expect_events(vec![]);
    BookingTest::with(())
        .given(vec![requested(), confirmed()])
        .when(by_alice(BookingCommand::ConfirmBooking {
            payment_id: Uuid::from_u128(0xbad),
        }))
        .then_expect_error(DomainError::InvalidTransition {
            status: "confirmed",
            action: "confirm",
        });
}

#[test]
fn cancelling_is_allowed_only_before_the_start() {
    BookingTest::with(())
        .given(vec![requested(), confirmed()])
        .when(by_alice(BookingCommand::CancelBooking {
            reason: Some(reason("plans changed")),
        }))
        .then_expect_events(vec![BookingEvent::BookingCancelled {
            reason: Some("plans changed".into()),
            cancelled_at: now(),
        }]);
    BookingTest::with(())
        .given(vec![requested(), confirmed()])
        .when(by_alice_at(
            starts(),
            BookingCommand::CancelBooking { reason: None },
        ))
        .then_expect_error(DomainError::BookingStarted);
}

#[test]
fn someone_elses_booking_is_not_found() {
    let bob = Issued::new(
        Actor::new("bob", [Role::Client]),
        now(),
        BookingCommand::CancelBooking { reason: None },
    );
    BookingTest::with(())
        .given(vec![requested()])
        .when(bob)
        .then_expect_error(DomainError::NotFound);
}

fn commands() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(0..5u8, 0..12)
}

proptest! {
    #[test]
    fn replaying_the_events_yields_the_same_state(steps in commands(), hours in 0..400i64) {
        let mut booking = Booking::default();
        let mut history = Vec::new();
        let at = now() + Duration::hours(hours);
        let mut all = vec![request(starts(), starts() + Duration::hours(2))];
        all.extend(steps.iter().map(|step| match step {
            0 => BookingCommand::ConfirmBooking { payment_id: PAYMENT },
            1 => BookingCommand::RejectBooking { reason: reason("r") },
            2 => BookingCommand::CancelBooking { reason: None },
            3 => BookingCommand::ExpireBooking,
            _ => request(starts(), starts() + Duration::hours(1)),
        }));
        for (i, command) in all.into_iter().enumerate() {
            let when = if i == 0 { now() } else { at };
            if let Ok(events) = booking.decide(&by_alice_at(when, command)) {
                for event in events {
                    booking.apply(event.clone());
                    history.push(event);
                }
            }
        }
        let mut replayed = Booking::default();
        history.iter().cloned().for_each(|e| replayed.apply(e));
        prop_assert_eq!(&replayed, &booking);
        // A terminal status is never left.
        let statuses: Vec<_> = history.iter().filter(|e| !matches!(e, BookingEvent::BookingRequested { .. })).collect();
        prop_assert!(statuses.len() <= 2);
    }
}

#[test]
fn each_event_reads_as_one_change_of_the_booking() {
    let BookingChange::Requested(mut state) = requested().change() else {
        panic!("a request creates the booking");
    };
    assert_eq!(state.status, BookingStatus::Pending);
    assert_eq!(state.payment_id, None);
    let payment_id = Uuid::from_u128(9);
    let confirmed = BookingEvent::BookingConfirmed {
        payment_id,
        confirmed_at: now(),
    };
    let BookingChange::Status(change) = confirmed.change() else {
        panic!("a confirmation changes the status");
    };
    assert_eq!(
        change,
        StatusChange {
            status: BookingStatus::Confirmed,
            reason: None,
            payment_id: Some(payment_id),
        }
    );
    state.follow(&change);
    let cancelled = BookingEvent::BookingCancelled {
        reason: Some("plans changed".to_owned()),
        cancelled_at: now(),
    };
    let BookingChange::Status(change) = cancelled.change() else {
        panic!("a cancellation changes the status");
    };
    assert_eq!(change.reason.as_deref(), Some("plans changed"));
    state.follow(&change);
    assert_eq!(state.status, BookingStatus::Cancelled);
    assert_eq!(state.payment_id, Some(payment_id), "the payment stays");
}
