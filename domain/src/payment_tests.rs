use chrono::{DateTime, Duration, TimeZone, Utc};
use cqrs_es::test::TestFramework;
use proptest::prelude::*;

use super::*;
use crate::actor::{Actor, Role};
use crate::money::Currency;

type PaymentTest = TestFramework<Payment>;

const PAYMENT: Uuid = Uuid::from_u128(0xa1);
const ACCOUNT: Uuid = Uuid::from_u128(0xacc0);

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 1, 12, 0, 0).unwrap()
}

fn by(subject: &str, role: Role, command: PaymentCommand) -> Issued<PaymentCommand> {
    Issued::new(Actor::new(subject, [role]), now(), command)
}

fn by_alice(command: PaymentCommand) -> Issued<PaymentCommand> {
    by("alice", Role::Client, command)
}

fn by_system(command: PaymentCommand) -> Issued<PaymentCommand> {
    Issued::new(Actor::system("test"), now(), command)
}

fn money(amount: i64) -> Money {
    Money::new(
        Amount::new("amount", amount).unwrap(),
        Currency::parse("EUR").unwrap(),
    )
}

fn amount(value: i64) -> Amount {
    Amount::new("amount", value).unwrap()
}

fn initiate(kind: PaymentKind, schedule: Option<Schedule>) -> PaymentCommand {
    PaymentCommand::InitiatePayment(PaymentRequest {
        payment_id: PAYMENT,
        account_id: ACCOUNT,
        owner: "alice".into(),
        amount: money(1_000),
        kind,
        schedule,
        booking_id: None,
    })
}

fn initiated(kind: PaymentKind, schedule: Option<Schedule>) -> PaymentEvent {
    PaymentEvent::PaymentInitiated {
        payment_id: PAYMENT,
        account_id: ACCOUNT,
        owner: "alice".into(),
        amount: money(1_000),
        kind,
        schedule,
        booking_id: None,
        initiated_at: now(),
    }
}

fn monthly(count: u32) -> Schedule {
    Schedule {
        interval_seconds: 30 * 24 * 3600,
        count: Some(count),
        until: None,
    }
}

fn captured(charge: u32) -> PaymentEvent {
    PaymentEvent::PaymentCaptured {
        charge,
        amount: 1_000,
        captured_at: now(),
    }
}

fn refunded(id: u128, amount: i64) -> PaymentEvent {
    PaymentEvent::PaymentRefunded {
        refund_id: Uuid::from_u128(id),
        amount,
        refunded_at: now(),
    }
}

fn refund(id: u128, value: i64) -> PaymentCommand {
    PaymentCommand::RefundPayment {
        refund_id: Uuid::from_u128(id),
        amount: amount(value),
    }
}

#[test]
fn a_one_time_payment_is_initiated_pending() {
    PaymentTest::with(())
        .given_no_previous_events()
        .when(by_alice(initiate(PaymentKind::OneTime, None)))
        .then_expect_events(vec![initiated(PaymentKind::OneTime, None)]);
}

#[test]
fn a_recurring_payment_needs_a_valid_schedule() {
    PaymentTest::with(())
        .given_no_previous_events()
        .when(by_alice(initiate(PaymentKind::Recurring, Some(monthly(3)))))
        .then_expect_events(vec![initiated(PaymentKind::Recurring, Some(monthly(3)))]);
    for schedule in [
        None,
        Some(Schedule {
            interval_seconds: 0,
            count: Some(3),
            until: None,
        }),
        Some(Schedule {
            interval_seconds: 60,
            count: None,
            until: None,
        }),
        Some(Schedule {
            interval_seconds: 60,
            count: Some(0),
            until: None,
        }),
        Some(Schedule {
            interval_seconds: 60,
            count: None,
            until: Some(now() - Duration::days(1)),
        }),
    ] {
        let error = PaymentTest::with(())
            .given_no_previous_events()
            .when(by_alice(initiate(PaymentKind::Recurring, schedule.clone())))
            .inspect_result()
            .unwrap_err();
        assert_eq!(error.code(), "validation_failed", "{schedule:?}");
    }
    let error = PaymentTest::with(())
        .given_no_previous_events()
        .when(by_alice(initiate(PaymentKind::OneTime, Some(monthly(1)))))
        .inspect_result()
        .unwrap_err();
    assert_eq!(error.code(), "validation_failed");
}

#[test]
fn a_pending_payment_is_captured_once() {
    PaymentTest::with(())
        .given(vec![initiated(PaymentKind::OneTime, None)])
        .when(by_system(PaymentCommand::CapturePayment { charge: 1 }))
        .then_expect_events(vec![captured(1)]);
    PaymentTest::with(())
        .given(vec![initiated(PaymentKind::OneTime, None), captured(1)])
        .when(by_system(PaymentCommand::CapturePayment { charge: 1 }))
        .then_expect_events(vec![]);
    PaymentTest::with(())
        .given(vec![initiated(PaymentKind::OneTime, None), captured(1)])
        .when(by_system(PaymentCommand::CapturePayment { charge: 2 }))
        .then_expect_error(DomainError::InvalidTransition {
            status: "captured",
            action: "capture",
        });
}

#[test]
fn a_failed_payment_cannot_be_captured() {
    let failed = PaymentEvent::PaymentFailed {
        reason: "insufficient_funds".into(),
        failed_at: now(),
    };
    PaymentTest::with(())
        .given(vec![initiated(PaymentKind::OneTime, None)])
        .when(by_system(PaymentCommand::FailPayment {
            reason: Note::parse("reason", "insufficient_funds").unwrap(),
        }))
        .then_expect_events(vec![failed.clone()]);
    PaymentTest::with(())
        .given(vec![initiated(PaymentKind::OneTime, None), failed])
        .when(by_system(PaymentCommand::CapturePayment { charge: 1 }))
        .then_expect_error(DomainError::InvalidTransition {
            status: "failed",
            action: "capture",
        });
}

#[test]
fn recurring_charges_are_captured_in_order_until_the_schedule_ends() {
    let given = vec![
        initiated(PaymentKind::Recurring, Some(monthly(2))),
        captured(1),
    ];
    PaymentTest::with(())
        .given(given.clone())
        .when(by_system(PaymentCommand::CapturePayment { charge: 3 }))
        .inspect_result()
        .unwrap_err();
    PaymentTest::with(())
        .given(given.clone())
        .when(by_system(PaymentCommand::CapturePayment { charge: 2 }))
        .then_expect_events(vec![captured(2)]);
    PaymentTest::with(())
        .given([given, vec![captured(2)]].concat())
        .when(by_system(PaymentCommand::CapturePayment { charge: 3 }))
        .then_expect_error(DomainError::InvalidTransition {
            status: "completed",
            action: "capture",
        });
}

#[test]
fn refunds_never_exceed_what_was_captured() {
    let given = vec![
        initiated(PaymentKind::OneTime, None),
        captured(1),
        refunded(1, 400),
    ];
    PaymentTest::with(())
        .given(given.clone())
        .when(by_alice(refund(2, 600)))
        .then_expect_events(vec![refunded(2, 600)]);
    PaymentTest::with(())
        .given(given)
        .when(by_alice(refund(2, 601)))
        .then_expect_error(DomainError::RefundExceedsCaptured {
            refundable: 600,
            requested: 601,
        });
    PaymentTest::with(())
        .given(vec![initiated(PaymentKind::OneTime, None)])
        .when(by_alice(refund(1, 1)))
        .then_expect_error(DomainError::RefundExceedsCaptured {
            refundable: 0,
            requested: 1,
        });
}

#[test]
fn a_repeated_refund_id_is_a_no_op() {
    PaymentTest::with(())
        .given(vec![
            initiated(PaymentKind::OneTime, None),
            captured(1),
            refunded(7, 100),
        ])
        .when(by_alice(refund(7, 100)))
        .then_expect_events(vec![]);
}

#[test]
fn someone_elses_payment_is_not_found() {
    PaymentTest::with(())
        .given(vec![initiated(PaymentKind::OneTime, None), captured(1)])
        .when(by("bob", Role::Client, refund(1, 1)))
        .then_expect_error(DomainError::NotFound);
}

#[test]
fn schedules_know_when_charges_fall_due() {
    let start = now();
    let schedule = Schedule {
        interval_seconds: 60,
        count: Some(3),
        until: None,
    };
    assert_eq!(schedule.due_at(start, 1), Some(start));
    assert_eq!(
        schedule.due_at(start, 3),
        Some(start + Duration::seconds(120))
    );
    assert_eq!(schedule.due_at(start, 4), None);
    let until = Schedule {
        interval_seconds: 60,
        count: None,
        until: Some(start + Duration::seconds(90)),
    };
    assert_eq!(until.due_at(start, 2), Some(start + Duration::seconds(60)));
    assert_eq!(until.due_at(start, 3), None);
}

proptest! {
    #[test]
    fn refunds_in_total_never_exceed_captures(
        charges in 1..5u32,
        refunds in prop::collection::vec((0..8u128, 1..1_500i64), 0..20),
    ) {
        let mut payment = Payment::default();
        let mut history = vec![];
        let mut commands = vec![initiate(PaymentKind::Recurring, Some(monthly(4)))];
        commands.extend((1..=charges).map(|charge| PaymentCommand::CapturePayment { charge }));
        commands.extend(refunds.iter().map(|(id, value)| refund(*id, *value)));
        for command in commands {
            if let Ok(events) = payment.decide(&by_system(command)) {
                for event in events {
                    payment.apply(event.clone());
                    history.push(event);
                }
            }
        }
        let state = payment.state().unwrap();
        prop_assert!(state.refunded_total <= state.captured_total);
        prop_assert_eq!(state.captured_total, i64::from(charges.min(4)) * 1_000);
        let mut replayed = Payment::default();
        history.into_iter().for_each(|e| replayed.apply(e));
        prop_assert_eq!(replayed, payment);
    }
}

fn fail_charge(charge: u32, attempt: u32, retry: bool) -> PaymentCommand {
    PaymentCommand::FailCharge {
        charge,
        attempt,
        reason: Note::parse("reason", "insufficient_funds").unwrap(),
        retry_at: retry.then(|| now() + Duration::seconds(30)),
    }
}

#[test]
fn a_failed_charge_is_retried_then_the_payment_is_suspended() {
    let given = vec![
        initiated(PaymentKind::Recurring, Some(monthly(3))),
        captured(1),
    ];
    PaymentTest::with(())
        .given(given.clone())
        .when(by_system(fail_charge(2, 1, true)))
        .then_expect_events(vec![PaymentEvent::ChargeFailed {
            charge: 2,
            attempt: 1,
            reason: "insufficient_funds".into(),
            retry_at: Some(now() + Duration::seconds(30)),
            failed_at: now(),
        }]);
    let first_failure = PaymentEvent::ChargeFailed {
        charge: 2,
        attempt: 1,
        reason: "insufficient_funds".into(),
        retry_at: Some(now() + Duration::seconds(30)),
        failed_at: now(),
    };
    // The same attempt again is a no-op; the last attempt suspends.
    PaymentTest::with(())
        .given([given.clone(), vec![first_failure.clone()]].concat())
        .when(by_system(fail_charge(2, 1, true)))
        .then_expect_events(vec![]);
    let result = PaymentTest::with(())
        .given([given.clone(), vec![first_failure.clone()]].concat())
        .when(by_system(fail_charge(2, 2, false)))
        .inspect_result()
        .unwrap();
    assert!(
        matches!(result.last(), Some(PaymentEvent::PaymentSuspended { .. })),
        "{result:?}"
    );
    let mut payment = Payment::default();
    for event in [given, vec![first_failure], result].concat() {
        payment.apply(event);
    }
    assert_eq!(payment.state().unwrap().status, PaymentStatus::Suspended);
    PaymentTest::with(())
        .given(vec![
            initiated(PaymentKind::Recurring, Some(monthly(3))),
            PaymentEvent::PaymentSuspended {
                reason: "x".into(),
                suspended_at: now(),
            },
        ])
        .when(by_system(PaymentCommand::CapturePayment { charge: 1 }))
        .then_expect_error(DomainError::InvalidTransition {
            status: "suspended",
            action: "capture",
        });
}

#[test]
fn a_schedule_until_a_date_completes_when_no_charge_is_left() {
    let schedule = Schedule {
        interval_seconds: 3600,
        count: None,
        until: Some(now() + Duration::minutes(90)),
    };
    let mut payment = Payment::default();
    for event in [
        initiated(PaymentKind::Recurring, Some(schedule)),
        captured(1),
    ] {
        payment.apply(event);
    }
    assert_eq!(payment.state().unwrap().status, PaymentStatus::Active);
    payment.apply(captured(2));
    assert_eq!(payment.state().unwrap().status, PaymentStatus::Completed);
}

#[test]
fn a_kind_reads_back_what_it_writes_and_nothing_else() {
    for kind in [PaymentKind::OneTime, PaymentKind::Recurring] {
        assert_eq!(PaymentKind::parse(kind.as_str()), Some(kind));
    }
    assert_eq!(PaymentKind::parse("weekly"), None);
    assert_eq!(PaymentKind::parse(""), None);
}
