use chrono::{DateTime, TimeZone, Utc};

use super::*;
use crate::actor::{Actor, Role};
use crate::money::{Amount, Currency};

const SUBSCRIPTION: Uuid = Uuid::from_u128(0x5b);
const ACCOUNT: Uuid = Uuid::from_u128(0xacc0);

fn day(y: i32, m: u32, d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap()
}

fn plan(name: &str, amount: i64) -> Plan {
    Plan {
        name: name.into(),
        price: Money::new(
            Amount::new("amount", amount).unwrap(),
            Currency::parse("EUR").unwrap(),
        ),
        interval: Interval::Month,
    }
}

/// Decides `command` at `at` as alice and applies what it caused.
fn run(
    subscription: &mut Subscription,
    at: DateTime<Utc>,
    command: SubscriptionCommand,
) -> Result<Vec<SubscriptionEvent>, DomainError> {
    let issued = Issued::new(Actor::new("alice", [Role::Client]), at, command);
    let events = subscription.decide(&issued)?;
    for event in events.clone() {
        subscription.apply(event);
    }
    Ok(events)
}

fn started(at: DateTime<Utc>, trial_days: u32, amount: i64) -> Subscription {
    let mut subscription = Subscription::default();
    run(
        &mut subscription,
        at,
        SubscriptionCommand::Start(SubscriptionRequest {
            subscription_id: SUBSCRIPTION,
            account_id: ACCOUNT,
            owner: "alice".into(),
            plan: plan("basic", amount),
            trial_days,
            starts_at: None,
        }),
    )
    .unwrap();
    subscription
}

fn state(subscription: &Subscription) -> &SubscriptionState {
    subscription.state().unwrap()
}

/// Charges the period due, as the process manager would, at its due time.
fn charge_due(subscription: &mut Subscription) -> DateTime<Utc> {
    let s = state(subscription);
    let due = s.next_charge_at().unwrap();
    let Charge {
        period,
        amount,
        carried,
    } = s.next_charge();
    run(
        subscription,
        due,
        SubscriptionCommand::RecordCharge {
            period,
            amount,
            carried,
        },
    )
    .unwrap();
    due
}

#[test]
fn a_monthly_plan_started_on_the_31st_of_january_bills_on_the_last_days_of_shorter_months() {
    let mut subscription = started(day(2028, 1, 31), 0, 1_000);
    let dues: Vec<_> = (0..4).map(|_| charge_due(&mut subscription)).collect();
    assert_eq!(
        dues,
        [
            day(2028, 1, 31),
            day(2028, 2, 29),
            day(2028, 3, 31),
            day(2028, 4, 30)
        ]
    );
    assert_eq!(state(&subscription).status, SubscriptionStatus::Active);
}

#[test]
fn a_trial_cancelled_before_its_end_is_never_charged() {
    let mut subscription = started(day(2028, 4, 1), 14, 1_000);
    assert_eq!(state(&subscription).status, SubscriptionStatus::Trialing);
    assert_eq!(
        state(&subscription).next_charge_at(),
        Some(day(2028, 4, 15))
    );
    let events = run(
        &mut subscription,
        day(2028, 4, 10),
        SubscriptionCommand::Cancel {
            at_period_end: true,
            reason: None,
        },
    )
    .unwrap();
    assert!(matches!(
        events[..],
        [SubscriptionEvent::SubscriptionCancelled {
            refund: 0,
            unpaid: false,
            ..
        }]
    ));
    assert_eq!(state(&subscription).next_charge_at(), None);
}

#[test]
fn an_upgrade_in_mid_period_charges_exactly_the_prorated_difference() {
    let mut subscription = started(day(2028, 4, 1), 0, 1_000);
    charge_due(&mut subscription);
    let events = run(
        &mut subscription,
        day(2028, 4, 16), // 15 of April's 30 days left
        SubscriptionCommand::ChangePlan {
            plan: plan("plus", 3_000),
            at_period_end: false,
            reason: Some(Note::reason("more rooms")),
        },
    )
    .unwrap();
    let [SubscriptionEvent::PlanChanged { credit, charge, .. }] = events[..] else {
        panic!("{events:?}");
    };
    assert_eq!((credit, charge), (500, 1_500));
    // The next period is billed on the new plan.
    assert_eq!(state(&subscription).plan_for(1).price.amount, 3_000);
    // Another change in the same period credits what the new plan was charged for.
    let events = run(
        &mut subscription,
        day(2028, 4, 26), // 5 days left
        SubscriptionCommand::ChangePlan {
            plan: plan("basic", 1_000),
            at_period_end: false,
            reason: None,
        },
    )
    .unwrap();
    let [SubscriptionEvent::PlanChanged { credit, charge, .. }] = events[..] else {
        panic!("{events:?}");
    };
    assert_eq!((credit, charge), (500, 167));
}

#[test]
fn a_change_at_period_end_bills_the_next_period_on_the_new_plan_and_nothing_now() {
    let mut subscription = started(day(2028, 4, 1), 0, 1_000);
    charge_due(&mut subscription);
    let events = run(
        &mut subscription,
        day(2028, 4, 16),
        SubscriptionCommand::ChangePlan {
            plan: plan("lite", 400),
            at_period_end: true,
            reason: None,
        },
    )
    .unwrap();
    assert!(matches!(
        events[..],
        [SubscriptionEvent::PlanChangeScheduled { period: 1, .. }]
    ));
    assert_eq!(state(&subscription).plan.name, "basic");
    assert_eq!(charge_due(&mut subscription), day(2028, 5, 1));
    assert_eq!(state(&subscription).last_charge, 400);
    assert_eq!(state(&subscription).plan.name, "lite");
}

#[test]
fn cancelling_at_period_end_charges_nothing_more_and_ends_with_the_period() {
    let mut subscription = started(day(2028, 4, 1), 0, 1_000);
    charge_due(&mut subscription);
    run(
        &mut subscription,
        day(2028, 4, 10),
        SubscriptionCommand::Cancel {
            at_period_end: true,
            reason: None,
        },
    )
    .unwrap();
    assert_eq!(state(&subscription).ends_at, Some(day(2028, 5, 1)));
    assert_eq!(state(&subscription).next_charge_at(), None);
    assert_eq!(
        run(
            &mut subscription,
            day(2028, 4, 30),
            SubscriptionCommand::Renew
        )
        .unwrap(),
        []
    );
    run(
        &mut subscription,
        day(2028, 5, 1),
        SubscriptionCommand::Renew,
    )
    .unwrap();
    assert_eq!(state(&subscription).status, SubscriptionStatus::Ended);
}

#[test]
fn cancelling_now_refunds_the_unused_part_of_the_period() {
    let mut subscription = started(day(2028, 4, 1), 0, 1_000);
    charge_due(&mut subscription);
    let events = run(
        &mut subscription,
        day(2028, 4, 11), // 20 of 30 days left
        SubscriptionCommand::Cancel {
            at_period_end: false,
            reason: None,
        },
    )
    .unwrap();
    assert!(matches!(
        events[..],
        [SubscriptionEvent::SubscriptionCancelled { refund: 667, .. }]
    ));
    assert_eq!(state(&subscription).status, SubscriptionStatus::Cancelled);
    // Cancelling again answers the same, and nothing more happens.
    assert_eq!(
        run(
            &mut subscription,
            day(2028, 4, 12),
            SubscriptionCommand::Cancel {
                at_period_end: false,
                reason: None
            }
        )
        .unwrap(),
        []
    );
}

#[test]
fn a_pause_shifts_the_next_charge_by_the_time_paused() {
    let mut subscription = started(day(2028, 4, 1), 0, 1_000);
    charge_due(&mut subscription);
    run(
        &mut subscription,
        day(2028, 4, 10),
        SubscriptionCommand::Pause { reason: None },
    )
    .unwrap();
    assert_eq!(state(&subscription).next_charge_at(), None, "paused");
    run(
        &mut subscription,
        day(2028, 4, 20),
        SubscriptionCommand::Resume { reason: None },
    )
    .unwrap();
    assert_eq!(state(&subscription).status, SubscriptionStatus::Active);
    assert_eq!(
        state(&subscription).next_charge_at(),
        Some(day(2028, 5, 11))
    );
}

#[test]
fn three_refused_charges_cancel_it_unpaid_and_a_charge_before_the_last_rescues_it() {
    let fail = |attempt, retry: Option<DateTime<Utc>>| SubscriptionCommand::FailCharge {
        period: 1,
        attempt,
        reason: Note::reason("insufficient_funds"),
        retry_at: retry,
    };
    let mut unpaid = started(day(2028, 4, 1), 0, 1_000);
    charge_due(&mut unpaid);
    let mut rescued = unpaid.clone();
    run(&mut unpaid, day(2028, 5, 1), fail(1, Some(day(2028, 5, 2)))).unwrap();
    assert_eq!(state(&unpaid).status, SubscriptionStatus::PastDue);
    assert_eq!(state(&unpaid).next_charge_at(), Some(day(2028, 5, 2)));
    run(&mut unpaid, day(2028, 5, 2), fail(2, Some(day(2028, 5, 5)))).unwrap();
    // Redelivered: nothing new.
    assert_eq!(
        run(&mut unpaid, day(2028, 5, 2), fail(2, Some(day(2028, 5, 5)))).unwrap(),
        []
    );
    run(&mut unpaid, day(2028, 5, 5), fail(3, None)).unwrap();
    assert_eq!(state(&unpaid).status, SubscriptionStatus::Cancelled);
    assert_eq!(state(&unpaid).next_charge_at(), None);

    run(
        &mut rescued,
        day(2028, 5, 1),
        fail(1, Some(day(2028, 5, 2))),
    )
    .unwrap();
    run(
        &mut rescued,
        day(2028, 5, 2),
        SubscriptionCommand::RecordCharge {
            period: 1,
            amount: 1_000,
            carried: 0,
        },
    )
    .unwrap();
    assert_eq!(state(&rescued).status, SubscriptionStatus::Active);
    assert_eq!(state(&rescued).next_charge_at(), Some(day(2028, 6, 1)));
}

#[test]
fn a_charge_recorded_twice_is_recorded_once() {
    let mut subscription = started(day(2028, 4, 1), 0, 1_000);
    charge_due(&mut subscription);
    assert_eq!(
        run(
            &mut subscription,
            day(2028, 4, 1),
            SubscriptionCommand::RecordCharge {
                period: 0,
                amount: 1_000,
                carried: 0,
            }
        )
        .unwrap(),
        []
    );
    assert_eq!(state(&subscription).periods_charged, 1);
    assert!(matches!(
        run(
            &mut subscription,
            day(2028, 4, 1),
            SubscriptionCommand::RecordCharge {
                period: 3,
                amount: 1_000,
                carried: 0,
            }
        ),
        Err(DomainError::Validation {
            field: "period",
            ..
        })
    ));
}

#[test]
fn a_plan_change_keeps_the_currency_and_the_interval() {
    let mut subscription = started(day(2028, 4, 1), 0, 1_000);
    let mut yearly = plan("yearly", 10_000);
    yearly.interval = Interval::Year;
    let change = |plan| SubscriptionCommand::ChangePlan {
        plan,
        at_period_end: false,
        reason: None,
    };
    assert!(matches!(
        run(&mut subscription, day(2028, 4, 2), change(yearly)),
        Err(DomainError::Validation {
            field: "plan.interval",
            ..
        })
    ));
    let mut dollars = plan("usd", 1_000);
    dollars.price.currency = Currency::parse("USD").unwrap();
    assert!(matches!(
        run(&mut subscription, day(2028, 4, 2), change(dollars)),
        Err(DomainError::CurrencyMismatch { .. })
    ));
}

#[test]
fn a_refused_proration_is_carried_to_the_next_charge_and_settled_by_a_refund() {
    let mut subscription = started(day(2028, 4, 1), 0, 1_000);
    charge_due(&mut subscription);
    let change = SubscriptionCommand::ChangePlan {
        plan: plan("plus", 3_000),
        at_period_end: false,
        reason: None,
    };
    let events = run(&mut subscription, day(2028, 4, 16), change).unwrap();
    let [SubscriptionEvent::PlanChanged { credit, charge, .. }] = events[..] else {
        panic!("{events:?}");
    };
    // The account refuses the net of 1,000; it is owed with May's charge.
    let carry = SubscriptionCommand::CarryBalance {
        amount: charge - credit,
        reason: Note::reason("insufficient_funds"),
    };
    run(&mut subscription, day(2028, 4, 16), carry).unwrap();
    assert_eq!(state(&subscription).balance_due, 1_000);
    assert_eq!(
        state(&subscription).next_charge(),
        Charge {
            period: 1,
            amount: 3_000,
            carried: 1_000
        }
    );
    // More than is due cannot be recorded as collected.
    let too_much = SubscriptionCommand::RecordCharge {
        period: 1,
        amount: 3_000,
        carried: 1_001,
    };
    assert!(matches!(
        run(&mut subscription, day(2028, 5, 1), too_much),
        Err(DomainError::Validation {
            field: "carried",
            ..
        })
    ));
    charge_due(&mut subscription);
    assert_eq!(state(&subscription).balance_due, 0);
    assert_eq!(state(&subscription).last_charge, 3_000);

    // Carried again in May, then cancelled at once with 15 of May's 31 days left: the
    // unused 2,419 of the new plan settles the 967 due, and 1,452 is refunded.
    let change = SubscriptionCommand::ChangePlan {
        plan: plan("max", 5_000),
        at_period_end: false,
        reason: None,
    };
    let events = run(&mut subscription, day(2028, 5, 17), change).unwrap();
    let [SubscriptionEvent::PlanChanged { credit, charge, .. }] = events[..] else {
        panic!("{events:?}");
    };
    assert_eq!((credit, charge), (1_452, 2_419));
    let carry = SubscriptionCommand::CarryBalance {
        amount: 967,
        reason: Note::reason("insufficient_funds"),
    };
    run(&mut subscription, day(2028, 5, 17), carry).unwrap();
    let cancel = SubscriptionCommand::Cancel {
        at_period_end: false,
        reason: None,
    };
    let events = run(&mut subscription, day(2028, 5, 17), cancel).unwrap();
    assert!(matches!(
        events[..],
        [SubscriptionEvent::SubscriptionCancelled {
            refund: 1_452,
            settled: 967,
            ..
        }]
    ));
    assert_eq!(state(&subscription).balance_due, 0);
}

#[test]
fn a_balance_larger_than_the_refund_stays_owed_after_a_cancellation() {
    let mut subscription = started(day(2028, 4, 1), 0, 1_000);
    charge_due(&mut subscription);
    let carry = |amount| SubscriptionCommand::CarryBalance {
        amount,
        reason: Note::reason("insufficient_funds"),
    };
    run(&mut subscription, day(2028, 4, 2), carry(5_000)).unwrap();
    let cancel = SubscriptionCommand::Cancel {
        at_period_end: false,
        reason: None,
    };
    let events = run(&mut subscription, day(2028, 4, 16), cancel).unwrap();
    assert!(matches!(
        events[..],
        [SubscriptionEvent::SubscriptionCancelled {
            refund: 0,
            settled: 500,
            ..
        }]
    ));
    assert_eq!(state(&subscription).balance_due, 4_500);
    // A carry that arrives after the cancellation is still recorded.
    run(&mut subscription, day(2028, 4, 17), carry(100)).unwrap();
    assert_eq!(state(&subscription).balance_due, 4_600);
    assert!(matches!(
        run(&mut subscription, day(2028, 4, 17), carry(0)),
        Err(DomainError::Validation {
            field: "amount",
            ..
        })
    ));
}
