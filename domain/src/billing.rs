//! The arithmetic of subscriptions, apart from any aggregate: calendar periods anchored
//! on a start, and proration in integer minor units (issue 15).
//!
//! **Periods.** A subscription's `n`-th period starts `n` intervals after its anchor,
//! counted from the anchor every time (never from the previous period's start), so a
//! month anchored on 31 January starts on 28 or 29 February and on 31 March again.
//! Weeks are seven days; years are twelve months (an anchor on 29 February starts on
//! 28 February in common years). Everything is UTC; the time of day is the anchor's.
//!
//! **Proration** (ADR 0034). The part of a period still to come is `remaining /
//! length` in whole seconds. A plan's share of it is `amount × remaining / length`,
//! computed exactly in 128-bit integers and rounded half up to the minor unit. A plan
//! change in mid-period credits the old plan's share and charges the new plan's share,
//! each rounded on its own, so each line of the invoice is what it says.

use chrono::{DateTime, Datelike, Days, Months, Utc};
use serde::{Deserialize, Serialize};

crate::worded! {
    /// How often a plan bills.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum Interval {
        Week = "week",
        Month = "month",
        Year = "year",
    }
}

impl Interval {
    /// The start of period `n` of a subscription anchored on `anchor` (period 0 starts
    /// on the anchor). `None` only beyond chrono's range of dates.
    pub fn period_start(self, anchor: DateTime<Utc>, n: u32) -> Option<DateTime<Utc>> {
        match self {
            Self::Week => anchor.checked_add_days(Days::new(7 * u64::from(n))),
            Self::Month => anchor.checked_add_months(Months::new(n)),
            Self::Year => anchor.checked_add_months(Months::new(n.checked_mul(12)?)),
        }
    }

    /// The period of a subscription anchored on `anchor` that contains `at`: its number,
    /// start and end (exclusive). Before the anchor, period 0.
    pub fn period_at(
        self,
        anchor: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Option<(u32, DateTime<Utc>, DateTime<Utc>)> {
        // An estimate from the calendar, then corrected: month lengths vary, so the
        // estimate may be one period off either way.
        let mut n = match self {
            Self::Week => ((at - anchor).num_days().max(0) / 7) as u32,
            Self::Month => months_between(anchor, at),
            Self::Year => months_between(anchor, at) / 12,
        };
        loop {
            let start = self.period_start(anchor, n)?;
            let end = self.period_start(anchor, n + 1)?;
            if at < start && n > 0 {
                n -= 1;
            } else if at >= end {
                n += 1;
            } else {
                return Some((n, start, end));
            }
        }
    }

    /// What a plan of `amount` a period at this interval counts for in monthly
    /// recurring revenue, in minor units, rounded half up: a year counts a twelfth, a
    /// week 52/12.
    pub fn monthly(self, amount: i64) -> i64 {
        match self {
            Self::Week => share(amount, 52, 12),
            Self::Month => amount,
            Self::Year => share(amount, 1, 12),
        }
    }
}

/// Whole calendar months from `from` to `to` by year and month alone (0 when `to` is
/// earlier).
fn months_between(from: DateTime<Utc>, to: DateTime<Utc>) -> u32 {
    let months = (i64::from(to.year()) - i64::from(from.year())) * 12 + i64::from(to.month())
        - i64::from(from.month());
    u32::try_from(months.max(0)).unwrap_or(u32::MAX)
}

/// `amount × part / whole`, rounded half up (away from zero for negative amounts), in
/// exact integer arithmetic. `whole` must be positive; `part` is clamped to `0..=whole`
/// by the callers that need it.
pub fn share(amount: i64, part: i64, whole: i64) -> i64 {
    assert!(whole > 0, "a share of nothing");
    let product = i128::from(amount) * i128::from(part);
    let whole = i128::from(whole);
    let rounded = if product >= 0 {
        (2 * product + whole) / (2 * whole)
    } else {
        -((-2 * product + whole) / (2 * whole))
    };
    i64::try_from(rounded).unwrap_or(if rounded > 0 { i64::MAX } else { i64::MIN })
}

/// The share of a period `[start, end)` still to come at `at`, as (remaining, length) in
/// whole seconds.
pub fn unused(start: DateTime<Utc>, end: DateTime<Utc>, at: DateTime<Utc>) -> (i64, i64) {
    let length = (end - start).num_seconds().max(1);
    let remaining = (end - at).num_seconds().clamp(0, length);
    (remaining, length)
}

/// The two lines of a plan change at `at` in the period `[start, end)`: the credit for
/// the old plan's unused part and the charge for the new plan's, both non-negative
/// minor units.
pub fn proration(
    old_amount: i64,
    new_amount: i64,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    at: DateTime<Utc>,
) -> Proration {
    let (remaining, length) = unused(start, end, at);
    Proration {
        credit: share(old_amount, remaining, length),
        charge: share(new_amount, remaining, length),
    }
}

/// What a mid-period plan change credits and charges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proration {
    pub credit: i64,
    pub charge: i64,
}

impl Proration {
    /// What moves: positive is charged to the account, negative refunded to it.
    pub fn net(self) -> i64 {
        self.charge - self.credit
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 9, 30, 0).unwrap()
    }

    #[test]
    fn a_month_anchored_on_the_31st_bills_on_the_last_day_of_shorter_months() {
        let anchor = at(2028, 1, 31); // 2028 is a leap year
        let starts: Vec<_> = (0..6)
            .map(|n| Interval::Month.period_start(anchor, n).unwrap())
            .collect();
        assert_eq!(
            starts,
            [
                at(2028, 1, 31),
                at(2028, 2, 29),
                at(2028, 3, 31),
                at(2028, 4, 30),
                at(2028, 5, 31),
                at(2028, 6, 30)
            ]
        );
        assert_eq!(
            Interval::Month.period_start(at(2027, 1, 31), 1),
            Some(at(2027, 2, 28))
        );
    }

    #[test]
    fn a_year_anchored_on_the_29th_of_february_bills_on_the_28th_in_common_years() {
        let anchor = at(2028, 2, 29);
        assert_eq!(
            Interval::Year.period_start(anchor, 1),
            Some(at(2029, 2, 28))
        );
        assert_eq!(
            Interval::Year.period_start(anchor, 4),
            Some(at(2032, 2, 29))
        );
        assert_eq!(Interval::Week.period_start(anchor, 1), Some(at(2028, 3, 7)));
    }

    #[test]
    fn the_period_containing_a_time_is_found_from_either_side() {
        let anchor = at(2028, 1, 31);
        assert_eq!(
            Interval::Month.period_at(anchor, at(2028, 3, 30)),
            Some((1, at(2028, 2, 29), at(2028, 3, 31)))
        );
        assert_eq!(
            Interval::Month.period_at(anchor, at(2028, 3, 31)),
            Some((2, at(2028, 3, 31), at(2028, 4, 30)))
        );
        assert_eq!(
            Interval::Month.period_at(anchor, at(2027, 12, 1)),
            Some((0, at(2028, 1, 31), at(2028, 2, 29))),
            "before the anchor: the first period"
        );
        // Every second of a span lies in exactly the period whose bounds contain it.
        for day in 0..800 {
            let t = anchor + chrono::Duration::hours(day * 11);
            for interval in Interval::ALL {
                let (n, start, end) = interval.period_at(anchor, t).unwrap();
                assert!(start <= t && t < end, "{interval} {t}");
                assert_eq!(interval.period_start(anchor, n), Some(start));
            }
        }
    }

    #[test]
    fn shares_round_half_up_in_exact_integers() {
        assert_eq!(share(1_000, 1, 3), 333);
        assert_eq!(share(1_000, 2, 3), 667);
        assert_eq!(share(5, 1, 2), 3, "half rounds up");
        assert_eq!(share(-5, 1, 2), -3, "and away from zero below it");
        assert_eq!(share(i64::MAX, 1, 1), i64::MAX, "no overflow on the way");
        assert_eq!(Interval::Year.monthly(12_000), 1_000);
        assert_eq!(Interval::Week.monthly(1_000), 4_333);
        assert_eq!(Interval::Month.monthly(999), 999);
    }

    #[test]
    fn an_upgrade_half_way_credits_half_the_old_plan_and_charges_half_the_new() {
        let (start, end) = (at(2028, 4, 1), at(2028, 5, 1)); // 30 days
        let half = start + chrono::Duration::days(15);
        let change = proration(1_000, 3_001, start, end, half);
        assert_eq!(
            change,
            Proration {
                credit: 500,
                charge: 1_501
            }
        );
        assert_eq!(change.net(), 1_001);
        let downgrade = proration(3_000, 1_000, start, end, half);
        assert_eq!(downgrade.net(), -1_000);
        assert_eq!(
            proration(1_000, 2_000, start, end, end).net(),
            0,
            "at the end"
        );
        assert_eq!(
            proration(1_000, 2_000, start, end, start).net(),
            1_000,
            "at the start: the whole difference"
        );
    }
}
