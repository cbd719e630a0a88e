//! The skeleton every read-model table group shares: load the rows a batch's events
//! touch, fold the events into them in order (pure, see [`Fold`]), write what changed.
//! Ordering and duplicates are decided here once; each table module says only what an
//! event means for its rows.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Tx;
use super::apply::{Fresh, Order, Tally};

/// Where an event stands in its stream and in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct At {
    pub sequence: i64,
    pub recorded_at: DateTime<Utc>,
    pub position: i64,
}

/// What every read-model row carries to guard against duplicates and to say how fresh
/// it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct Stamp {
    pub version: i64,
    pub updated_at: DateTime<Utc>,
    pub last_position: i64,
}

impl From<At> for Stamp {
    fn from(at: At) -> Self {
        Self {
            version: at.sequence,
            updated_at: at.recorded_at,
            last_position: at.position,
        }
    }
}

/// A table group's meaning of its aggregate's events: pure, so it is tested without a
/// database. `Self` collects what the batch writes besides the aggregates' rows (ledger
/// lines, history versions).
pub(crate) trait Fold: Default {
    type Event;
    /// An aggregate's row as the fold needs it.
    type State;

    fn stamp(state: &mut Self::State) -> &mut Stamp;

    /// The state an opening event creates; `None` for any other event.
    fn open(&mut self, id: Uuid, event: &Self::Event, at: At) -> Option<Self::State>;

    /// Applies a later event to its aggregate's state; false, changing nothing, for an
    /// event the state cannot take (a second opening).
    fn change(&mut self, id: Uuid, state: &mut Self::State, event: &Self::Event, at: At) -> bool;

    /// Called after each applied event with the aggregate's new state.
    fn applied(&mut self, _id: Uuid, _state: &Self::State, _at: At) {}
}

/// A table group's rows: how they are read and written.
pub(crate) trait Table: Fold {
    /// The rows of `ids` that exist, locked for the batch.
    fn load(
        tx: &mut Tx<'_>,
        ids: &[Uuid],
    ) -> impl Future<Output = Result<HashMap<Uuid, Self::State>, sqlx::Error>> + Send;

    /// Writes what the batch folded.
    fn write(
        tx: &mut Tx<'_>,
        folded: &Folded<Self>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

/// What a batch's events made of the rows.
pub(crate) struct Folded<F: Fold> {
    pub states: HashMap<Uuid, F::State>,
    /// Aggregates created by this batch, in id order.
    pub created: Vec<Uuid>,
    /// Aggregates that existed before the batch and changed, in id order.
    pub changed: Vec<Uuid>,
    pub effects: F,
    pub tally: Tally,
}

impl<F: Fold> Folded<F> {
    /// The states of `ids`.
    pub fn states_of<'a>(&'a self, ids: &'a [Uuid]) -> impl Iterator<Item = &'a F::State> + 'a {
        ids.iter().map(|id| &self.states[id])
    }
}

/// Folds `events` (each aggregate's in sequence order) into `states`, each event
/// guarded by its aggregate's version (see [`Order`]).
#[cfg(test)]
pub(crate) fn fold<'e, F: Fold + 'e>(
    states: HashMap<Uuid, F::State>,
    events: impl IntoIterator<Item = (Uuid, &'e F::Event, At)>,
) -> Folded<F> {
    fold_into(F::default(), states, events)
}

/// Folds `events` (each aggregate's in sequence order) into `states`, each event
/// guarded by its aggregate's version (see [`Order`]), starting from `effects` (what the
/// batch knows besides its events).
pub(crate) fn fold_into<'e, F: Fold + 'e>(
    mut effects: F,
    mut states: HashMap<Uuid, F::State>,
    events: impl IntoIterator<Item = (Uuid, &'e F::Event, At)>,
) -> Folded<F> {
    let mut tally = Tally::default();
    let mut created = BTreeSet::new();
    let mut changed = BTreeSet::new();
    for (id, event, at) in events {
        let version = states.get_mut(&id).map(|state| F::stamp(state).version);
        if !Order::of(version, at.sequence).admits(&mut tally, at.position) {
            continue;
        }
        let state = match states.entry(id) {
            Entry::Vacant(slot) => match effects.open(id, event, at) {
                Some(state) => {
                    created.insert(id);
                    slot.insert(state)
                }
                // A change with no row and no predecessor: nothing to change.
                None => {
                    tally.stale += 1;
                    continue;
                }
            },
            Entry::Occupied(slot) => {
                let state = slot.into_mut();
                if !effects.change(id, state, event, at) {
                    tally.stale += 1;
                    continue;
                }
                changed.insert(id);
                state
            }
        };
        *F::stamp(state) = Stamp::from(at);
        effects.applied(id, state, at);
        tally.applied += 1;
    }
    Folded {
        changed: changed.difference(&created).copied().collect(),
        created: created.into_iter().collect(),
        states,
        effects,
        tally,
    }
}

/// A word a row stores (a status, a kind) read back as its enum: a word this projector
/// never writes is a decode error naming `what`, never a guess.
pub(crate) fn stored_word<T>(
    parse: fn(&str) -> Option<T>,
    word: &str,
    what: std::fmt::Arguments<'_>,
) -> Result<T, sqlx::Error> {
    parse(word).ok_or_else(|| sqlx::Error::Decode(format!("{what}: {word:?}").into()))
}

/// Loads, folds and writes one table group's share of a batch.
pub(crate) async fn apply<T: Table>(
    tx: &mut Tx<'_>,
    events: &[Fresh<'_, T::Event>],
) -> Result<Tally, sqlx::Error> {
    apply_from(T::default(), tx, events).await
}

/// [`apply`], folding from `effects`.
pub(crate) async fn apply_from<T: Table>(
    effects: T,
    tx: &mut Tx<'_>,
    events: &[Fresh<'_, T::Event>],
) -> Result<Tally, sqlx::Error> {
    if events.is_empty() {
        return Ok(Tally::default());
    }
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    let states = T::load(tx, &ids).await?;
    let folded = fold_into(effects, states, events.iter().map(Fresh::parts));
    T::write(tx, &folded).await?;
    Ok(folded.tally)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `At` for sequence `sequence`, at second `sequence` and position `10 * sequence`.
    pub(crate) fn at(sequence: i64) -> At {
        At {
            sequence,
            recorded_at: DateTime::from_timestamp(sequence, 0).unwrap_or_default(),
            position: 10 * sequence,
        }
    }

    /// A counter: `Open(n)` creates it at n, `Add(n)` adds.
    #[derive(Default)]
    struct Counters {
        seen: Vec<(Uuid, i64)>,
    }

    enum Event {
        Open(i64),
        Add(i64),
    }

    impl Fold for Counters {
        type Event = Event;
        type State = (i64, Stamp);

        fn stamp(state: &mut Self::State) -> &mut Stamp {
            &mut state.1
        }

        fn open(&mut self, _id: Uuid, event: &Event, at: At) -> Option<Self::State> {
            match event {
                Event::Open(n) => Some((*n, Stamp::from(at))),
                Event::Add(_) => None,
            }
        }

        fn change(&mut self, _id: Uuid, state: &mut Self::State, event: &Event, _at: At) -> bool {
            match event {
                Event::Open(_) => false,
                Event::Add(n) => {
                    state.0 += n;
                    true
                }
            }
        }

        fn applied(&mut self, id: Uuid, state: &Self::State, _at: At) {
            self.seen.push((id, state.0));
        }
    }

    #[test]
    fn events_apply_in_order_and_duplicates_and_gaps_are_counted_not_applied() {
        let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let existing = HashMap::from([(b, (100, Stamp::from(at(4))))]);
        let events = [
            (a, Event::Open(1), at(1)),
            (a, Event::Add(2), at(2)),
            (a, Event::Add(5), at(4)), // early: 3 is missing
            (b, Event::Add(7), at(4)), // stale: b is at 4
            (b, Event::Add(3), at(5)),
            (c, Event::Add(1), at(1)),  // no row and not an opening
            (b, Event::Open(1), at(6)), // a second opening
        ];
        let folded = fold::<Counters>(existing, events.iter().map(|(id, e, at)| (*id, e, *at)));
        assert_eq!(folded.created, vec![a]);
        assert_eq!(folded.changed, vec![b]);
        assert_eq!(folded.states[&a], (3, Stamp::from(at(2))));
        assert_eq!(folded.states[&b], (103, Stamp::from(at(5))));
        assert_eq!(folded.effects.seen, vec![(a, 1), (a, 3), (b, 103)]);
        assert_eq!(
            folded.tally,
            Tally {
                applied: 3,
                stale: 3,
                early: vec![40]
            }
        );
    }
}
