//! The property test of issue 15: random sequences of plan changes, pauses, resumes,
//! cancellations and refused charges, billed as the process manager bills (each charge
//! at its due time, retries after 24 and 72 hours; a plan change's net the empty account
//! refuses carried to the next charge), against an independent model of what should be
//! charged. The model keeps its own calendar (month lengths and leap years
//! written out, periods found by walking from the anchor) and its own exact arithmetic;
//! the ledger the events imply must agree with it to the minor unit, period by period.

use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};
use proptest::prelude::*;

use super::*;
use crate::actor::{Actor, Role};
use crate::money::{Amount, Currency};

const DAY: i64 = 24 * 3600;
/// The process manager's default waits before the second and third attempts.
const RETRIES: [i64; 2] = [DAY, 3 * DAY];

fn plan(amount: i64, interval: Interval) -> Plan {
    Plan {
        name: format!("plan {amount}"),
        price: Money::new(
            Amount::new("amount", amount).unwrap(),
            Currency::parse("EUR").unwrap(),
        ),
        interval,
    }
}

// ---------------------------------------------------------------------------------------
// The model.

fn leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in(year: i32, month: u32) -> u32 {
    match month {
        2 if leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `t` moved `months` calendar months, the day clamped to the month's last.
fn months_later(t: DateTime<Utc>, months: u32) -> DateTime<Utc> {
    let index = t.year() * 12 + t.month0() as i32 + months as i32;
    let (year, month) = (index.div_euclid(12), index.rem_euclid(12) as u32 + 1);
    let day = t.day().min(days_in(year, month));
    Utc.with_ymd_and_hms(year, month, day, t.hour(), t.minute(), t.second())
        .unwrap()
        + Duration::nanoseconds(i64::from(t.nanosecond()))
}

fn model_start(interval: Interval, anchor: DateTime<Utc>, n: u32) -> DateTime<Utc> {
    match interval {
        Interval::Week => anchor + Duration::days(7 * i64::from(n)),
        Interval::Month => months_later(anchor, n),
        Interval::Year => months_later(anchor, 12 * n),
    }
}

/// `amount × part / whole` rounded half up, for non-negative values.
fn rounded_share(amount: i64, part: i64, whole: i64) -> i64 {
    let (a, p, w) = (amount as i128, part as i128, whole as i128);
    ((2 * a * p + w) / (2 * w)) as i64
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Standing {
    Billing,
    Paused { at: DateTime<Utc> },
    Cancelled,
    Ended,
}

/// What should happen, kept apart from the aggregate.
#[derive(Debug)]
struct Model {
    interval: Interval,
    anchor: DateTime<Utc>,
    amount: i64,
    /// A plan change taking effect from a period.
    scheduled: Option<(u32, i64)>,
    paid: u32,
    /// What the rest of the current paid period is billed at.
    rate: i64,
    refused: u32,
    retry_at: Option<DateTime<Utc>>,
    ends_at: Option<DateTime<Utc>>,
    standing: Standing,
    /// Money the subscriber should have paid in all (refunds subtracted).
    ledger: i64,
    /// Plan changes' nets the account refused, owed with the next charge.
    balance: i64,
    /// The amount each period was charged.
    charges: Vec<i64>,
}

impl Model {
    fn start(&self, n: u32) -> DateTime<Utc> {
        model_start(self.interval, self.anchor, n)
    }

    /// The period `t` falls in (period 0 before the anchor), walking from the anchor.
    fn period_of(&self, t: DateTime<Utc>) -> u32 {
        let mut n = 0;
        while self.start(n + 1) <= t {
            n += 1;
        }
        n
    }

    fn amount_for(&self, n: u32) -> i64 {
        match self.scheduled {
            Some((from, amount)) if from <= n => amount,
            _ => self.amount,
        }
    }

    /// When the next charge is due, if any.
    fn due(&self) -> Option<DateTime<Utc>> {
        if self.standing != Standing::Billing {
            return None;
        }
        let start = self.start(self.paid);
        if self.ends_at.is_some_and(|end| start >= end) {
            return None;
        }
        Some(self.retry_at.map_or(start, |retry| retry.max(start)))
    }

    fn charged(&mut self) {
        let amount = self.amount_for(self.paid);
        if let Some((from, new)) = self.scheduled
            && from <= self.paid
        {
            self.amount = new;
            self.scheduled = None;
        }
        self.ledger += amount + self.balance;
        self.balance = 0;
        self.charges.push(amount);
        self.rate = amount;
        self.paid += 1;
        self.refused = 0;
        self.retry_at = None;
    }

    fn refused_at(&mut self, t: DateTime<Utc>) {
        self.refused += 1;
        match RETRIES.get(self.refused as usize - 1) {
            Some(wait) => self.retry_at = Some(t + Duration::seconds(*wait)),
            None => self.standing = Standing::Cancelled,
        }
    }

    /// The unused share of the paid period containing `t`, at `rate`; zero when the
    /// period containing `t` was not paid.
    fn unused_share(&self, t: DateTime<Utc>, rate: i64) -> Option<i64> {
        let n = self.period_of(t);
        if t < self.anchor || n >= self.paid {
            return None;
        }
        let (start, end) = (self.start(n), self.start(n + 1));
        let length = (end - start).num_seconds().max(1);
        let remaining = (end - t).num_seconds().clamp(0, length);
        Some(rounded_share(rate, remaining, length))
    }

    /// A plan change; `broke`: the account refuses a net to pay, which is carried.
    fn change(&mut self, t: DateTime<Utc>, amount: i64, at_period_end: bool, broke: bool) {
        let n = self.period_of(t);
        let paid_now = t >= self.anchor && n < self.paid;
        if at_period_end && paid_now {
            self.scheduled = Some((n + 1, amount));
            return;
        }
        if let (Some(credit), Some(charge)) = (
            self.unused_share(t, self.rate),
            self.unused_share(t, amount),
        ) {
            if broke && charge > credit {
                self.balance += charge - credit;
            } else {
                self.ledger += charge - credit;
            }
            if charge > 0 {
                self.rate = amount;
            }
        }
        self.amount = amount;
        self.scheduled = None;
    }

    fn cancel(&mut self, t: DateTime<Utc>, at_period_end: bool) {
        let paused_at = match self.standing {
            Standing::Paused { at } => Some(at),
            _ => None,
        };
        let effective = paused_at.unwrap_or(t);
        let n = self.period_of(effective);
        let paid_now = effective >= self.anchor && n < self.paid;
        if at_period_end && paid_now && paused_at.is_none() {
            self.ends_at = Some(self.start(n + 1));
            return;
        }
        let unused = self.unused_share(effective, self.rate).unwrap_or(0);
        let settled = unused.min(self.balance);
        self.balance -= settled;
        self.ledger -= unused - settled;
        self.standing = Standing::Cancelled;
    }

    fn pause(&mut self, t: DateTime<Utc>) {
        self.standing = Standing::Paused { at: t };
    }

    fn resume(&mut self, t: DateTime<Utc>) {
        if let Standing::Paused { at } = self.standing {
            self.anchor += t - at;
            self.standing = Standing::Billing;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The run.

#[derive(Clone, Debug)]
enum Op {
    Change {
        amount: i64,
        at_period_end: bool,
        /// The account cannot pay the net just then (it can pay charges later).
        short: bool,
    },
    Pause,
    Resume,
    Cancel {
        at_period_end: bool,
    },
    /// The account empties, or is filled again.
    Broke(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => ((1..20i64).prop_map(|n| n * 500), any::<bool>(), any::<bool>())
            .prop_map(|(amount, at_period_end, short)| Op::Change { amount, at_period_end, short }),
        2 => Just(Op::Pause),
        2 => Just(Op::Resume),
        1 => any::<bool>().prop_map(|at_period_end| Op::Cancel { at_period_end }),
        2 => any::<bool>().prop_map(Op::Broke),
    ]
}

fn interval() -> impl Strategy<Value = Interval> {
    prop_oneof![
        Just(Interval::Week),
        Just(Interval::Month),
        Just(Interval::Year)
    ]
}

struct Run {
    subscription: Subscription,
    /// Every event the aggregate recorded, in order.
    events: Vec<SubscriptionEvent>,
    model: Model,
    broke: bool,
}

impl Run {
    fn issue(&mut self, at: DateTime<Utc>, command: SubscriptionCommand) -> bool {
        let issued = Issued::new(Actor::new("alice", [Role::Client]), at, command);
        match self.subscription.decide(&issued) {
            Ok(events) if !events.is_empty() => {
                for event in events {
                    self.subscription.apply(event.clone());
                    self.events.push(event);
                }
                true
            }
            _ => false,
        }
    }

    fn state(&self) -> &SubscriptionState {
        self.subscription.state().unwrap()
    }

    /// Bills what falls due up to `until`, as the process manager would, each charge
    /// at its due time; checks the aggregate and the model agree on every due time.
    fn bill_until(&mut self, until: DateTime<Utc>) -> Result<(), TestCaseError> {
        loop {
            let state = self.state().clone();
            if let Some(end) = state.ends_at
                && end <= until
                && !state.status.is_final()
            {
                // The end comes before anything due after it.
                let due = state.next_charge_at();
                if due.is_none_or(|d| d >= end) {
                    prop_assert!(self.issue(end, SubscriptionCommand::Renew));
                    self.model.standing = Standing::Ended;
                    continue;
                }
            }
            let due = state.next_charge_at();
            prop_assert_eq!(due, self.model.due(), "due time; model {:?}", self.model);
            let Some(due) = due.filter(|d| *d <= until) else {
                return Ok(());
            };
            let period = state.next_period();
            if self.broke {
                let attempt = state.failed_attempts.get(&period).copied().unwrap_or(0) + 1;
                let retry_at = RETRIES
                    .get(attempt as usize - 1)
                    .map(|wait| due + Duration::seconds(*wait));
                let fail = SubscriptionCommand::FailCharge {
                    period,
                    attempt,
                    reason: Note::reason("insufficient_funds"),
                    retry_at,
                };
                prop_assert!(self.issue(due, fail));
                self.model.refused_at(due);
            } else {
                let Charge {
                    period,
                    amount,
                    carried,
                } = state.next_charge();
                prop_assert_eq!(carried, self.model.balance, "the balance due");
                let record = SubscriptionCommand::RecordCharge {
                    period,
                    amount,
                    carried,
                };
                prop_assert!(self.issue(due, record));
                self.model.charged();
            }
        }
    }

    fn apply(&mut self, t: DateTime<Utc>, op: &Op) {
        match op {
            Op::Broke(broke) => self.broke = *broke,
            Op::Change {
                amount,
                at_period_end,
                short,
            } => {
                let broke = self.broke || *short;
                let plan = plan(*amount, self.model.interval);
                let command = SubscriptionCommand::ChangePlan {
                    plan,
                    at_period_end: *at_period_end,
                    reason: None,
                };
                if self.issue(t, command) {
                    self.model.change(t, *amount, *at_period_end, broke);
                    // The process manager moves the net; a refused one is carried.
                    if let Some(SubscriptionEvent::PlanChanged { credit, charge, .. }) =
                        self.events.last().cloned()
                        && broke
                        && charge > credit
                    {
                        let carry = SubscriptionCommand::CarryBalance {
                            amount: charge - credit,
                            reason: Note::reason("insufficient_funds"),
                        };
                        assert!(self.issue(t, carry));
                    }
                }
            }
            Op::Pause => {
                if self.issue(t, SubscriptionCommand::Pause { reason: None }) {
                    self.model.pause(t);
                }
            }
            Op::Resume => {
                if self.issue(t, SubscriptionCommand::Resume { reason: None }) {
                    self.model.resume(t);
                }
            }
            Op::Cancel { at_period_end } => {
                let command = SubscriptionCommand::Cancel {
                    at_period_end: *at_period_end,
                    reason: None,
                };
                if self.issue(t, command) {
                    self.model.cancel(t, *at_period_end);
                }
            }
        }
    }
}

/// What the subscription's events say: the money moved (charges with the balance they
/// collected, prorations' nets not carried, refunds), what was owed (charges, nets,
/// unused shares given back or settled), and each period's charge.
fn ledger_of(events: &[SubscriptionEvent]) -> (i64, i64, Vec<i64>) {
    let (mut moved, mut owed) = (0, 0);
    let mut charges = Vec::new();
    for event in events {
        match event {
            SubscriptionEvent::PeriodCharged {
                amount, carried, ..
            } => {
                moved += amount + carried;
                owed += amount;
                charges.push(*amount);
            }
            SubscriptionEvent::PlanChanged { credit, charge, .. } => {
                moved += charge - credit;
                owed += charge - credit;
            }
            SubscriptionEvent::BalanceCarried { amount, .. } => moved -= amount,
            SubscriptionEvent::SubscriptionCancelled {
                refund, settled, ..
            } => {
                moved -= refund;
                owed -= refund + settled;
            }
            _ => {}
        }
    }
    (moved, owed, charges)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn the_ledger_agrees_with_an_independent_model(
        interval in interval(),
        amount in (1..20i64).prop_map(|n| n * 500),
        trial_days in prop_oneof![Just(0u32), Just(7), Just(31)],
        // 31 January, 29 February and mid-month starts, at odd times of day.
        start_day in prop_oneof![Just((2028, 1, 31)), Just((2028, 2, 29)), Just((2027, 3, 15))],
        start_second in 0..DAY,
        steps in prop::collection::vec(((1..60 * DAY), op()), 1..25),
    ) {
        let (y, m, d) = start_day;
        let start = Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap() + Duration::seconds(start_second);
        let mut subscription = Subscription::default();
        let mut events = Vec::new();
        let begin = Issued::new(
            Actor::new("alice", [Role::Client]),
            start,
            SubscriptionCommand::Start(SubscriptionRequest {
                subscription_id: Uuid::from_u128(7),
                account_id: Uuid::from_u128(8),
                owner: "alice".into(),
                plan: plan(amount, interval),
                trial_days,
                starts_at: None,
            }),
        );
        for event in subscription.decide(&begin).unwrap() {
            subscription.apply(event.clone());
            events.push(event);
        }
        let model = Model {
            interval,
            anchor: start + Duration::days(i64::from(trial_days)),
            amount,
            scheduled: None,
            paid: 0,
            rate: 0,
            refused: 0,
            retry_at: None,
            ends_at: None,
            standing: Standing::Billing,
            ledger: 0,
            balance: 0,
            charges: Vec::new(),
        };
        let mut run = Run { subscription, events, model, broke: false };
        let mut t = start;
        for (gap, op) in &steps {
            t += Duration::seconds(*gap);
            run.bill_until(t)?;
            let before = run.subscription.version;
            run.apply(t, op);
            prop_assert!(run.subscription.version >= before);
        }
        run.bill_until(t + Duration::days(400))?;
        // Every event, replayed from the start, makes the same subscription.
        let mut replayed = Subscription::default();
        for event in run.events.iter().cloned() {
            replayed.apply(event);
        }
        let (moved, owed, charges) = ledger_of(&run.events);
        prop_assert_eq!(&charges, &run.model.charges, "charges per period");
        prop_assert_eq!(moved, run.model.ledger, "the ledger");
        let balance = run.state().balance_due;
        prop_assert_eq!(balance, run.model.balance, "the balance due");
        prop_assert_eq!(owed, moved + balance, "what was owed is paid or still due");
        prop_assert_eq!(replayed, run.subscription);
    }
}
