//! Replays events through the domain's own `apply`, upcasting stored versions first.

use chronicle_domain::subscription::Subscription;
use chronicle_domain::upcast::upcasters;
use chronicle_domain::{Account, Booking, Payment};
use chronicle_eventstore::envelope::StoredEvent;
use cqrs_es::Aggregate;
use cqrs_es::persist::EventUpcaster;
use serde_json::Value;

/// The aggregate types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Account,
    Booking,
    Payment,
    Subscription,
}

impl Kind {
    /// Parses `account`, `Account`, `ACCOUNT`…
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "account" => Some(Self::Account),
            "booking" => Some(Self::Booking),
            "payment" => Some(Self::Payment),
            "subscription" => Some(Self::Subscription),
            _ => None,
        }
    }

    /// The stored `aggregate_type`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Account => "Account",
            Self::Booking => "Booking",
            Self::Payment => "Payment",
            Self::Subscription => "Subscription",
        }
    }
}

/// An aggregate being replayed.
#[derive(Clone, Debug)]
pub enum State {
    Account(Account),
    Booking(Booking),
    Payment(Payment),
    Subscription(Subscription),
}

/// Folds events into aggregates.
pub struct Replayer {
    upcasters: Vec<Box<dyn EventUpcaster>>,
}

impl Default for Replayer {
    fn default() -> Self {
        Self {
            upcasters: upcasters(),
        }
    }
}

fn apply<A: Aggregate>(aggregate: &mut A, payload: Value) -> Result<(), String>
where
    A::Event: serde::de::DeserializeOwned,
{
    let event: A::Event = serde_json::from_value(payload).map_err(|e| e.to_string())?;
    aggregate.apply(event);
    Ok(())
}

impl Replayer {
    /// The upcasters events go through.
    pub fn upcasters(&self) -> &[Box<dyn EventUpcaster>] {
        &self.upcasters
    }

    /// An empty aggregate of `kind`.
    pub fn start(&self, kind: Kind) -> State {
        match kind {
            Kind::Account => State::Account(Account::default()),
            Kind::Booking => State::Booking(Booking::default()),
            Kind::Payment => State::Payment(Payment::default()),
            Kind::Subscription => State::Subscription(Subscription::default()),
        }
    }

    /// Applies one stored event (upcast to its current version).
    pub fn apply(&self, state: &mut State, event: &StoredEvent) -> Result<(), String> {
        let payload = event.upcast(&self.upcasters).payload;
        match state {
            State::Account(a) => apply::<Account>(a, payload),
            State::Booking(b) => apply::<Booking>(b, payload),
            State::Payment(p) => apply::<Payment>(p, payload),
            State::Subscription(s) => apply::<Subscription>(s, payload),
        }
        .map_err(|e| {
            format!(
                "{} {} seq {}: {e}",
                event.aggregate_type, event.aggregate_id, event.sequence
            )
        })
    }
}

impl State {
    /// The aggregate's state as JSON.
    pub fn to_json(&self) -> Value {
        match self {
            Self::Account(a) => serde_json::to_value(a),
            Self::Booking(b) => serde_json::to_value(b),
            Self::Payment(p) => serde_json::to_value(p),
            Self::Subscription(s) => serde_json::to_value(s),
        }
        .unwrap_or(Value::Null)
    }

    /// The aggregate's version.
    pub fn version(&self) -> u64 {
        match self {
            Self::Account(a) => a.version,
            Self::Booking(b) => b.version,
            Self::Payment(p) => p.version,
            Self::Subscription(s) => s.version,
        }
    }
}
