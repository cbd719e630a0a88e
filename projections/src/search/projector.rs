//! The search projector: applies booking events to the index.
//!
//! Changes gather in memory and go to the index in one commit once enough documents
//! changed or enough time passed (`CHRONICLE_SEARCH_COMMIT_DOCS`,
//! `CHRONICLE_SEARCH_COMMIT_MS`). The commit carries the next offset of each partition as
//! its payload, so what is indexed and what was consumed can never disagree; a crash
//! loses only uncommitted work, which the topics deliver again. Each booking's document
//! carries its version: a redelivered or stale event changes nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chronicle_domain::booking::BookingState;
use chronicle_domain::subject::{ERASED, SUBJECT, SubjectEvent};
use chronicle_domain::{BookingChange, BookingEvent};
use chronicle_eventstore::envelope::{Envelope, topic_for};
use chronicle_eventstore::kafka::KafkaSettings;
use chronicle_eventstore::personal::MasterKeys;
use chronicle_eventstore::personal::open::open_envelopes;
use serde_json::Value;
use sqlx::PgPool;
use tantivy::indexer::LogMergePolicy;
use tantivy::{IndexWriter, Term};
use uuid::Uuid;

use super::index::{CommitPayload, SearchBooking, SearchIndex};
use crate::consumer::{ConsumerError, Delivered, OffsetStoringConsumer, PartitionKey, dead_letter};
use crate::metrics;
use crate::queries::{GuestView, MoneyView};
use chronicle_eventstore::metrics as consumer_metrics;

/// The search projector's name (consumer group, metrics).
pub const SEARCH: &str = "search";

/// When the search projector commits.
#[derive(Clone, Copy, Debug)]
pub struct SearchSettings {
    /// Commit once this many bookings changed.
    pub commit_docs: usize,
    /// Commit at least this often while changes are pending.
    pub commit_interval: Duration,
    /// Memory for the index writer.
    pub writer_memory: usize,
}

impl Default for SearchSettings {
    fn default() -> Self {
        Self {
            commit_docs: 10_000,
            commit_interval: Duration::from_millis(500),
            writer_memory: 64 * 1024 * 1024,
        }
    }
}

struct Pending {
    writer: IndexWriter,
    /// Changed bookings not yet committed, by id.
    changed: HashMap<Uuid, SearchBooking>,
    /// Next offset per partition, including what is pending.
    offsets: HashMap<PartitionKey, i64>,
    since: Instant,
    /// Whether a pending change erased a guest: the commit then merges away the
    /// deleted documents that still hold their fields.
    erased: bool,
}

/// The search projection.
pub struct SearchProjection {
    index: Arc<SearchIndex>,
    settings: SearchSettings,
    pending: Arc<Mutex<Pending>>,
    /// Where unreadable messages are set aside (`projector_dead_letters`) and the keys
    /// of sealed personal fields are read (`subject_keys`).
    dead_letters: Option<PgPool>,
    /// Opens sealed personal fields (ADR 0035).
    keys: Arc<MasterKeys>,
}

impl SearchProjection {
    /// Takes the index's writer (one per index directory).
    pub fn new(index: Arc<SearchIndex>, settings: SearchSettings) -> tantivy::Result<Self> {
        let writer: IndexWriter = index.index.writer(settings.writer_memory)?;
        // Every status change replaces a booking's document, leaving the old one deleted
        // in its segment. Segments merge by size (tantivy's log policy); one that is a
        // third deleted is merged too, so deleted documents do not pile up in large
        // segments that have no peers to merge with.
        let mut merges = LogMergePolicy::default();
        merges.set_del_docs_ratio_before_merge(1.0 / 3.0);
        writer.set_merge_policy(Box::new(merges));
        let offsets = index.committed_offsets()?;
        Ok(Self {
            pending: Arc::new(Mutex::new(Pending {
                writer,
                changed: HashMap::new(),
                offsets,
                since: Instant::now(),
                erased: false,
            })),
            index,
            settings,
            dead_letters: None,
            keys: Arc::new(MasterKeys::development()),
        })
    }

    /// Sets aside messages it cannot read in `pool`'s `projector_dead_letters`, as every
    /// consumer does. Without it (benchmarks) they are only logged and counted.
    #[must_use]
    pub fn with_dead_letters(mut self, pool: PgPool) -> Self {
        self.dead_letters = Some(pool);
        self
    }

    /// Opens sealed personal fields with `keys` (the development keys otherwise).
    #[must_use]
    pub fn with_keys(mut self, keys: Arc<MasterKeys>) -> Self {
        self.keys = keys;
        self
    }

    /// The opened payloads of the sealed ones among `envelopes`, by global position.
    /// Keys are read as they are now: an erasure committed before this read shows here
    /// as erased fields; one committed after it is delivered after these events and
    /// erases what they indexed. Without a database (benchmarks) sealed fields read as
    /// erased.
    async fn open(&self, envelopes: &[Envelope]) -> Result<HashMap<i64, Value>, ConsumerError> {
        let sealed = envelopes
            .iter()
            .any(|e| chronicle_eventstore::personal::seal::sealed_part(&e.payload).is_some());
        if !sealed {
            return Ok(HashMap::new());
        }
        match &self.dead_letters {
            Some(pool) => {
                let mut connection = pool.acquire().await?;
                Ok(open_envelopes(&mut connection, &self.keys, envelopes).await?)
            }
            None => Ok(envelopes
                .iter()
                .filter_map(|e| {
                    let mut payload = e.payload.clone();
                    chronicle_eventstore::personal::seal::open(&mut payload, None, &[]).ok()?;
                    Some((e.global_position, payload))
                })
                .collect()),
        }
    }

    async fn dead_letter(&self, delivered: &Delivered, reason: &str) -> Result<(), ConsumerError> {
        match &self.dead_letters {
            Some(pool) => dead_letter(pool, SEARCH, delivered, reason).await?,
            None => {
                tracing::error!(topic = %delivered.topic, offset = delivered.offset, %reason, "unreadable message skipped (no dead-letter table)");
                consumer_metrics::PROJECTOR_DEAD_LETTERS
                    .with_label_values(&[SEARCH])
                    .inc();
            }
        }
        Ok(())
    }

    /// Runs `work` on the pending state off the async runtime (indexing and commits are
    /// blocking I/O).
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&SearchIndex, &SearchSettings, &mut Pending) -> Result<T, ConsumerError>
        + Send
        + 'static,
    ) -> Result<T, ConsumerError> {
        let (index, settings, pending) = (self.index.clone(), self.settings, self.pending.clone());
        tokio::task::spawn_blocking(move || {
            let mut pending = pending
                .lock()
                .map_err(|_| ConsumerError::Other("search writer poisoned".into()))?;
            work(&index, &settings, &mut pending)
        })
        .await
        .map_err(|e| ConsumerError::Other(format!("search task: {e}")))?
    }
}

impl SearchProjection {
    /// Applies events read straight from the event store (`chronicle-replay rebuild`)
    /// and sets what the next commit records as offsets to `progress`; commits when
    /// `commit` is true.
    pub async fn apply_envelopes(
        &self,
        envelopes: Vec<Envelope>,
        progress: HashMap<PartitionKey, i64>,
        commit_now: bool,
    ) -> Result<(), ConsumerError> {
        let mut opened = self.open(&envelopes).await?;
        self.blocking(move |index, _, pending| {
            for envelope in envelopes {
                let position = envelope.global_position;
                let payload = opened.remove(&position);
                match read_envelope(envelope, payload) {
                    Ok(Some(event)) => apply_event(index, pending, event)?,
                    Ok(None) => {}
                    // Read straight from the store, where `chronicle-replay verify` and
                    // `diff` are the checks; a rebuild logs and counts it.
                    Err(reason) => {
                        tracing::error!(position, %reason, "unreadable booking event in the store; not indexed");
                        consumer_metrics::PROJECTOR_DEAD_LETTERS
                            .with_label_values(&[SEARCH])
                            .inc();
                    }
                }
            }
            pending.offsets = progress;
            if commit_now {
                commit(index, pending)?;
            }
            Ok(())
        })
        .await
    }
}

impl OffsetStoringConsumer for SearchProjection {
    fn name(&self) -> &str {
        SEARCH
    }

    fn topics(&self, kafka: &KafkaSettings) -> Vec<String> {
        vec![
            topic_for(&kafka.topic_prefix, "Booking"),
            topic_for(&kafka.topic_prefix, SUBJECT),
        ]
    }

    /// Searches see changes only at the next commit (every `commit_interval` at most),
    /// so waiting a tenth of it for a fetch costs little freshness and most of this
    /// consumer's load on a broker that answers fetches only at their deadline.
    fn fetch_wait(&self, kafka: &KafkaSettings) -> Duration {
        kafka.fetch_wait.max(self.settings.commit_interval / 10)
    }

    async fn stored_offsets(&self) -> Result<HashMap<PartitionKey, i64>, ConsumerError> {
        self.index.committed_offsets().map_err(search_error)
    }

    /// Unreadable messages are set aside before anything of the batch is applied, so a
    /// commit never moves the offsets past a message that was neither applied nor
    /// recorded.
    async fn apply_batch(&self, batch: &[Delivered]) -> Result<(), ConsumerError> {
        let mut envelopes = Vec::with_capacity(batch.len());
        let mut sources = Vec::with_capacity(batch.len());
        for delivered in batch {
            match delivered.envelope() {
                Ok(envelope) => {
                    envelopes.push(envelope);
                    sources.push(delivered);
                }
                Err(reason) => self.dead_letter(delivered, &reason).await?,
            }
        }
        let mut opened = self.open(&envelopes).await?;
        let mut events = Vec::with_capacity(envelopes.len());
        for (delivered, envelope) in sources.into_iter().zip(envelopes) {
            let payload = opened.remove(&envelope.global_position);
            match read_envelope(envelope, payload) {
                Ok(Some(event)) => events.push(event),
                Ok(None) => {}
                Err(reason) => self.dead_letter(delivered, &reason).await?,
            }
        }
        let next: Vec<(PartitionKey, i64)> = batch
            .iter()
            .map(|d| ((d.topic.clone(), d.partition), d.offset + 1))
            .collect();
        self.blocking(move |index, settings, pending| {
            for event in events {
                apply_event(index, pending, event)?;
            }
            pending.offsets.extend(next);
            if pending.changed.len() >= settings.commit_docs
                || pending.since.elapsed() >= settings.commit_interval
            {
                commit(index, pending)?;
            }
            Ok(())
        })
        .await
    }

    async fn idle(&self) -> Result<(), ConsumerError> {
        self.blocking(|index, settings, pending| {
            if !pending.changed.is_empty() && pending.since.elapsed() >= settings.commit_interval {
                commit(index, pending)?;
            }
            Ok(())
        })
        .await
    }

    async fn flush(&self) -> Result<(), ConsumerError> {
        self.blocking(|index, _, pending| commit(index, pending))
            .await
    }
}

fn search_error(error: tantivy::TantivyError) -> ConsumerError {
    ConsumerError::Other(format!("search index: {error}"))
}

/// Writes every pending booking (delete by id, then add) and commits with the offsets.
fn commit(index: &SearchIndex, pending: &mut Pending) -> Result<(), ConsumerError> {
    let started = Instant::now();
    let changed = pending.changed.len();
    let result = (|| {
        for booking in pending.changed.values() {
            pending.writer.delete_term(Term::from_field_text(
                index.fields.booking_id,
                &booking.booking_id.to_string(),
            ));
            pending.writer.add_document(index.document(booking))?;
        }
        let payload = serde_json::to_string(&CommitPayload::from_offsets(&pending.offsets))
            .map_err(|e| tantivy::TantivyError::InternalError(e.to_string()))?;
        let mut prepared = pending.writer.prepare_commit()?;
        prepared.set_payload(&payload);
        prepared.commit()?;
        index.refresh()?;
        if std::mem::take(&mut pending.erased) {
            purge_deleted(index, &mut pending.writer)?;
        }
        Ok(())
    })();
    pending.since = Instant::now();
    match result {
        Ok(()) => {
            pending.changed.clear();
            metrics::SEARCH_DOCUMENTS.set(index.len() as i64);
            metrics::PROJECTOR_BATCH_SECONDS
                .with_label_values(&["search-commit"])
                .observe(started.elapsed().as_secs_f64());
            tracing::debug!(changed, "search index committed");
            Ok(())
        }
        Err(error) => {
            // Start over from the last commit; the topics deliver the rest again.
            pending.writer.rollback().ok();
            pending.changed.clear();
            pending.offsets = index.committed_offsets().unwrap_or_default();
            Err(search_error(error))
        }
    }
}

/// An event the index reads. Erasures are rare and short-lived in a batch's list; the
/// booking variant is the one that matters, so neither is boxed.
#[allow(clippy::large_enum_variant)]
enum Readable {
    Booking {
        envelope: Envelope,
        id: Uuid,
        event: BookingEvent,
    },
    Erased(SubjectEvent),
}

/// Reads an event of the booking or subject topic (`opened`: its payload opened, when it
/// was sealed): `None` for another aggregate's event, an error (the reason) for what
/// cannot be read.
fn read_envelope(envelope: Envelope, opened: Option<Value>) -> Result<Option<Readable>, String> {
    let payload = opened.unwrap_or_else(|| envelope.payload.clone());
    match envelope.aggregate_type.as_str() {
        "Booking" => {
            let id = Uuid::parse_str(&envelope.aggregate_id)
                .map_err(|e| format!("aggregate id {:?}: {e}", envelope.aggregate_id))?;
            let event = serde_json::from_value::<BookingEvent>(payload)
                .map_err(|e| format!("Booking {}: {e}", envelope.event_type))?;
            Ok(Some(Readable::Booking {
                envelope,
                id,
                event,
            }))
        }
        SUBJECT => serde_json::from_value::<SubjectEvent>(payload)
            .map(|event| Some(Readable::Erased(event)))
            .map_err(|e| format!("Subject {}: {e}", envelope.event_type)),
        _ => Ok(None),
    }
}

fn apply_event(
    index: &SearchIndex,
    pending: &mut Pending,
    readable: Readable,
) -> Result<(), ConsumerError> {
    let (envelope, id, event) = match readable {
        Readable::Booking {
            envelope,
            id,
            event,
        } => (envelope, id, event),
        Readable::Erased(erasure) => return erase(index, pending, &erasure),
    };
    let current = match pending.changed.get(&id) {
        Some(booking) => Some(booking.clone()),
        None => index.get(id).map_err(search_error)?,
    };
    if current
        .as_ref()
        .is_some_and(|b| b.version >= envelope.sequence)
    {
        metrics::PROJECTOR_DUPLICATE_EVENTS
            .with_label_values(&[SEARCH])
            .inc();
        return Ok(());
    }
    if let Some(next) = evolve(current, &envelope, &event) {
        pending.changed.insert(id, next);
    }
    Ok(())
}

/// Applies an erasure: the subject's bookings, pending or committed, are written again
/// with the guest erased and without notes, so neither name, e-mail nor notes find
/// them. Their versions stay: later events still apply.
fn erase(
    index: &SearchIndex,
    pending: &mut Pending,
    erasure: &SubjectEvent,
) -> Result<(), ConsumerError> {
    for id in erasure.streams_of("Booking") {
        let Ok(id) = Uuid::parse_str(id) else {
            continue;
        };
        let current = match pending.changed.get(&id) {
            Some(booking) => Some(booking.clone()),
            None => index.get(id).map_err(search_error)?,
        };
        let Some(mut booking) = current else {
            continue;
        };
        booking.guest = GuestView {
            name: ERASED.to_owned(),
            email: ERASED.to_owned(),
        };
        booking.notes = None;
        pending.changed.insert(id, booking);
        pending.erased = true;
    }
    Ok(())
}

/// Merges the segments holding deleted documents, so that an erased guest's fields,
/// deleted with their old documents, leave the index's files (tantivy keeps a deleted
/// document until its segment merges). Erasures are rare; a merge costs what the
/// segments weigh. A segment already merging in the background is left to that merge.
fn purge_deleted(index: &SearchIndex, writer: &mut IndexWriter) -> tantivy::Result<()> {
    let segments: Vec<_> = index
        .index
        .searchable_segment_metas()?
        .into_iter()
        .filter(|meta| meta.has_deletes())
        .map(|meta| meta.id())
        .collect();
    if segments.is_empty() {
        return Ok(());
    }
    let merged = writer.merge(&segments).wait();
    if let Err(error) = merged {
        tracing::warn!(%error, "merging away erased documents failed; the merge policy will");
    }
    let _ = writer.garbage_collect_files().wait();
    index.refresh()
}

/// The booking after `event`, as the domain reads it ([`BookingEvent::change`]).
fn evolve(
    current: Option<SearchBooking>,
    envelope: &Envelope,
    event: &BookingEvent,
) -> Option<SearchBooking> {
    let change = match event.change() {
        BookingChange::Requested(booking) => {
            let BookingState {
                booking_id,
                account_id,
                owner,
                resource_id,
                seats,
                starts_at,
                ends_at,
                price,
                guest,
                notes,
                status,
                ..
            } = *booking;
            return Some(SearchBooking {
                booking_id,
                account_id,
                owner,
                resource_id,
                seats,
                starts_at,
                ends_at,
                price: MoneyView {
                    amount: price.amount,
                    currency: price.currency.to_string(),
                },
                guest: GuestView {
                    name: guest.name,
                    email: guest.email,
                },
                notes,
                status: status.as_str().to_owned(),
                version: envelope.sequence,
                created_at: envelope.recorded_at,
                updated_at: envelope.recorded_at,
                last_position: envelope.global_position,
            });
        }
        BookingChange::Status(change) => change,
    };
    // A status change for a booking the index never saw (its request was lost to a
    // failed message) has nothing to update.
    let mut booking = current?;
    booking.status = change.status.as_str().to_owned();
    booking.version = envelope.sequence;
    booking.updated_at = envelope.recorded_at;
    booking.last_position = envelope.global_position;
    Some(booking)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use chronicle_eventstore::envelope::EnvelopeMetadata;
    use serde_json::json;

    use super::*;

    fn envelope(
        position: i64,
        aggregate_type: &str,
        id: &str,
        event_type: &str,
        payload: Value,
    ) -> Envelope {
        Envelope {
            event_id: Uuid::new_v4(),
            global_position: position,
            aggregate_type: aggregate_type.into(),
            aggregate_id: id.into(),
            sequence: 1,
            event_type: event_type.into(),
            event_version: "1".into(),
            recorded_at: chrono::Utc::now(),
            payload,
            metadata: EnvelopeMetadata::default(),
        }
    }

    fn requested(position: i64, id: Uuid, name: &str, email: &str) -> Envelope {
        let at = chrono::Utc::now();
        let payload = json!({
            "type": "BookingRequested", "booking_id": id, "account_id": Uuid::new_v4(),
            "owner": "alice", "resource_id": "r", "seats": ["1"], "starts_at": at,
            "ends_at": at + chrono::Duration::hours(1),
            "price": { "amount": 100, "currency": "EUR" },
            "guest": { "name": name, "email": email }, "notes": "by the window",
            "requested_at": at
        });
        envelope(
            position,
            "Booking",
            &id.to_string(),
            "BookingRequested",
            payload,
        )
    }

    /// An erased guest's booking shares its segment with bookings that stay, too many for
    /// the merge policy's ratio of deleted documents: without the erasure's own merge,
    /// the deleted copy would keep the guest's words in the index's files.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_erasure_merges_the_erased_guests_words_out_of_the_index_files() {
        let dir = std::env::temp_dir().join(format!("chronicle-erase-{}", Uuid::new_v4()));
        let index = Arc::new(SearchIndex::open(&dir).unwrap());
        let projection = SearchProjection::new(index.clone(), SearchSettings::default()).unwrap();
        let (erased, kept) = (Uuid::new_v4(), Uuid::new_v4());
        let mut first = vec![requested(
            1,
            erased,
            "Ottoline Brackenbury",
            "otto@example.org",
        )];
        first.push(requested(2, kept, "Zoë Adams", "zoe@example.org"));
        for n in 3..6 {
            first.push(requested(n, Uuid::new_v4(), "Ada Byron", "ada@example.org"));
        }
        projection
            .apply_envelopes(first, HashMap::new(), true)
            .await
            .unwrap();
        assert_eq!(index.stored_postings("Brackenbury").unwrap(), 1);

        let erasure = SubjectEvent::PersonalDataErased {
            subject_id: "s".into(),
            erased_at: chrono::Utc::now(),
            key_versions: vec![1],
            streams: vec![chronicle_domain::subject::StreamRef {
                aggregate_type: "Booking".into(),
                aggregate_id: erased.to_string(),
            }],
        };
        let erasure = envelope(
            3,
            SUBJECT,
            "s",
            "PersonalDataErased",
            serde_json::to_value(erasure).unwrap(),
        );
        projection
            .apply_envelopes(vec![erasure], HashMap::new(), true)
            .await
            .unwrap();
        // At once, before the merge policy's background merges could have done it.
        for word in ["Brackenbury", "Ottoline", "otto", "window"] {
            let left = index.stored_postings(word).unwrap();
            // The kept bookings' notes say "by the window" too.
            let expected = if word == "window" { 4 } else { 0 };
            assert_eq!(left, expected, "{word}");
        }
        assert_eq!(index.get(erased).unwrap().unwrap().guest.name, ERASED);
        assert_eq!(index.get(kept).unwrap().unwrap().guest.name, "Zoë Adams");
        drop(projection);
        std::fs::remove_dir_all(&dir).ok();
    }
}
