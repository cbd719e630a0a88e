//! The feed's shared memory of recent events (ADR 0037): released batches in a bounded
//! ring, and per-subscriber cursors over it.
//!
//! The tail releases messages in Kafka order once the read models applied them, as
//! [`Batch`]es of a bounded size, each with the point before it. A subscriber keeps its
//! own [`FeedPosition`], moves it past every message (seen or not) and sends the ones its
//! viewer may see. Clients are woken only by batches holding events of their own: each
//! owner has a signal with the last batch that concerned it, set under the ring's lock
//! together with the batch, so a subscriber that saw no signal since its cursor can move
//! straight to the head. Nothing is kept per subscriber but its cursor and position: a
//! subscriber that falls behind the ring while events of its own were dropped is cut
//! with the point to resume from.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};

use chronicle_eventstore::feed::FeedPosition;
use tokio::sync::watch;

/// An event the feed may send, as the read models applied it.
#[derive(Debug)]
pub struct FeedEvent {
    pub global_position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    /// Who sees it besides admins and auditors: the owner of its account, booking,
    /// payment or subscription; `None` for events of no client (a subject's erasure).
    pub owner: Option<String>,
    /// The envelope as published (one line of JSON).
    pub data: String,
    /// When the relay sent it (the message's timestamp, milliseconds since the epoch).
    pub sent_at_ms: Option<i64>,
}

/// One message of the events topics, released: the read models are past it.
#[derive(Debug, Clone)]
pub struct Released {
    pub topic: usize,
    pub partition: usize,
    pub offset: u64,
    /// The event to deliver here; `None` for a message that delivers nothing (a second
    /// copy of an event, a copy the read models set aside, an unreadable message).
    pub event: Option<Arc<FeedEvent>>,
    /// When the relay sent the message (milliseconds since the epoch).
    pub sent_at_ms: Option<i64>,
}

/// Messages released together.
#[derive(Debug)]
struct Batch {
    seq: u64,
    before: FeedPosition,
    items: Vec<Released>,
}

/// Who is watching: their subject, and whether they see every event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Viewer {
    pub subject: String,
    pub sees_all: bool,
}

impl Viewer {
    pub fn may_see(&self, event: &FeedEvent) -> bool {
        self.sees_all || event.owner.as_deref() == Some(self.subject.as_str())
    }

    /// The signal that wakes this viewer: the owner's, or everyone's.
    fn signal_key(&self) -> Option<&str> {
        (!self.sees_all).then_some(self.subject.as_str())
    }
}

/// What a subscriber asked to see, beyond what it may.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub aggregate_type: Option<String>,
    pub aggregate_id: Option<String>,
}

impl Filter {
    pub fn admits(&self, event: &FeedEvent) -> bool {
        self.aggregate_type
            .as_deref()
            .is_none_or(|t| t.eq_ignore_ascii_case(&event.aggregate_type))
            && self
                .aggregate_id
                .as_deref()
                .is_none_or(|id| id.eq_ignore_ascii_case(&event.aggregate_id))
    }
}

struct Ring {
    batches: VecDeque<Arc<Batch>>,
    /// Messages held in `batches`.
    held: usize,
    next_seq: u64,
    /// The point after everything released; `None` until the tail started.
    head: Option<FeedPosition>,
    /// The last batch of all.
    all: watch::Sender<u64>,
    /// Per owner with subscribers here: the last batch holding one of its events.
    owners: HashMap<String, watch::Sender<u64>>,
}

impl Ring {
    fn first_seq(&self) -> u64 {
        self.batches.front().map_or(self.next_seq, |b| b.seq)
    }

    /// The point before the oldest batch held.
    fn front(&self) -> Option<&FeedPosition> {
        self.batches
            .front()
            .map(|b| &b.before)
            .or(self.head.as_ref())
    }
}

/// The feed's ring of released batches and its subscribers' signals.
pub struct Hub {
    ring: RwLock<Ring>,
    /// Most messages held; the oldest batches go first.
    capacity: usize,
}

/// The feed of this process has not started reading yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the live feed is starting")]
pub struct NotReady;

impl Hub {
    /// A hub holding at most `capacity` released messages.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            ring: RwLock::new(Ring {
                batches: VecDeque::new(),
                held: 0,
                next_seq: 1,
                head: None,
                all: watch::channel(0).0,
                owners: HashMap::new(),
            }),
            capacity: capacity.max(1),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Ring> {
        self.ring.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Ring> {
        self.ring.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The point after everything released, once the tail started.
    pub fn head(&self) -> Option<FeedPosition> {
        self.read().head.clone()
    }

    /// Starts the ring at `position` (where the tail begins reading); a ring that
    /// started already keeps its head.
    pub fn start_at(&self, position: FeedPosition) -> FeedPosition {
        self.write().head.get_or_insert(position).clone()
    }

    /// When the first message the ring holds past `from` was sent: how old the events a
    /// resume from `from` would start with are.
    pub fn first_sent_after(&self, from: &FeedPosition) -> Option<i64> {
        let ring = self.read();
        ring.batches
            .iter()
            .flat_map(|b| &b.items)
            .find(|i| !from.is_past(i.topic, i.partition, i.offset))
            .and_then(|i| i.sent_at_ms)
    }

    /// Messages held now.
    pub fn held(&self) -> usize {
        self.read().held
    }

    /// Appends released messages (each partition's in offset order) as batches of at
    /// most [`BATCH_MESSAGES`], drops the oldest batches beyond the capacity and wakes
    /// the subscribers concerned.
    pub fn release(&self, items: Vec<Released>) {
        if items.is_empty() {
            return;
        }
        let mut ring = self.write();
        let Some(mut head) = ring.head.clone() else {
            return;
        };
        let mut concerned: HashMap<String, u64> = HashMap::new();
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            let batch: Vec<Released> = items.by_ref().take(BATCH_MESSAGES).collect();
            let seq = ring.next_seq;
            ring.next_seq += 1;
            ring.held += batch.len();
            let before = head.clone();
            for item in &batch {
                head.advance(item.topic, item.partition, item.offset);
                if let Some(owner) = item.event.as_ref().and_then(|e| e.owner.as_ref()) {
                    concerned.insert(owner.clone(), seq);
                }
            }
            ring.batches.push_back(Arc::new(Batch {
                seq,
                before,
                items: batch,
            }));
        }
        let last = ring.next_seq - 1;
        ring.head = Some(head);
        while ring.held > self.capacity && ring.batches.len() > 1 {
            if let Some(dropped) = ring.batches.pop_front() {
                ring.held -= dropped.items.len();
            }
        }
        ring.all.send_replace(last);
        for (owner, seq) in concerned {
            if let Some(signal) = ring.owners.get(&owner) {
                signal.send_replace(seq);
            }
        }
    }

    /// A subscriber from `from` (or from now). A point older than the ring is accepted:
    /// [`Subscription::take_ready`] then answers [`Ready::Behind`] until it was caught
    /// up from Kafka.
    pub fn subscribe(
        self: &Arc<Self>,
        viewer: Viewer,
        filter: Filter,
        from: Option<FeedPosition>,
    ) -> Result<Subscription, NotReady> {
        let mut ring = self.write();
        let head = ring.head.clone().ok_or(NotReady)?;
        let last = ring.next_seq - 1;
        let mut signal = match viewer.signal_key() {
            None => ring.all.subscribe(),
            // A new owner signal cannot know which held batches concerned the owner:
            // it starts at the last, so that a subscriber scans the ring before it
            // trusts the signal's silence.
            Some(owner) => ring
                .owners
                .entry(owner.to_owned())
                .or_insert_with(|| watch::channel(last).0)
                .subscribe(),
        };
        signal.borrow_and_update();
        let attached = from.is_none();
        let (position, cursor) = match from {
            None => (head, ring.next_seq),
            Some(from) => (from, ring.first_seq()),
        };
        Ok(Subscription {
            hub: self.clone(),
            viewer,
            filter,
            position,
            cursor,
            attached,
            signal,
        })
    }

    /// Forgets an owner's signal once no subscriber holds it.
    fn forget(&self, viewer: &Viewer) {
        let Some(owner) = viewer.signal_key() else {
            return;
        };
        let mut ring = self.write();
        if ring
            .owners
            .get(owner)
            .is_some_and(|signal| signal.receiver_count() == 0)
        {
            ring.owners.remove(owner);
        }
    }
}

/// An event for one subscriber, with the point after it.
#[derive(Debug, Clone)]
pub struct Frame {
    pub id: String,
    pub event: Arc<FeedEvent>,
}

/// What a subscriber can do next.
#[derive(Debug)]
pub enum Ready {
    /// Events to send (possibly none: then wait for [`Subscription::changed`]).
    Frames(Vec<Frame>),
    /// Its point is older than the ring: read Kafka up to this point first.
    Behind(FeedPosition),
    /// It fell behind the ring while events of its own were dropped: end it, with its
    /// position as the point to resume from.
    Cut,
}

/// One subscriber's cursor over the ring.
pub struct Subscription {
    hub: Arc<Hub>,
    viewer: Viewer,
    filter: Filter,
    /// The point after the last message this subscriber moved past.
    position: FeedPosition,
    /// The next batch to read.
    cursor: u64,
    /// Whether it has read the ring at least once (before that, a gap between its point
    /// and the ring is history to read from Kafka, not a subscriber too slow).
    attached: bool,
    signal: watch::Receiver<u64>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let hub = self.hub.clone();
        let viewer = self.viewer.clone();
        // The receiver must be gone before the count is read.
        let _ = std::mem::replace(&mut self.signal, watch::channel(0).1);
        hub.forget(&viewer);
    }
}

/// Most events handed out by one [`Subscription::take_ready`] (whole batches are read,
/// so a call may give up to a batch's worth more).
const FRAMES_PER_TAKE: usize = 256;

/// Most messages in one batch of the ring. A subscriber reads whole batches, so this
/// bounds what one read hands to its connection however much the tail releases at once
/// (the read models commit up to thousands of messages together).
const BATCH_MESSAGES: usize = 128;

impl Subscription {
    /// The point to resume from: after everything this subscriber moved past.
    pub fn position(&self) -> &FeedPosition {
        &self.position
    }

    pub fn viewer(&self) -> &Viewer {
        &self.viewer
    }

    /// Moves past `items` (messages read from Kafka while catching up, or a batch of the
    /// ring) and gives the events to send.
    pub fn take(&mut self, items: &[Released], frames: &mut Vec<Frame>) {
        for item in items {
            if self
                .position
                .is_past(item.topic, item.partition, item.offset)
            {
                continue;
            }
            self.position
                .advance(item.topic, item.partition, item.offset);
            if let Some(event) = &item.event
                && self.viewer.may_see(event)
                && self.filter.admits(event)
            {
                frames.push(Frame {
                    id: self.position.encode(),
                    event: event.clone(),
                });
            }
        }
    }

    /// Reads what the ring holds past the cursor.
    pub fn take_ready(&mut self) -> Ready {
        let hub = self.hub.clone();
        let ring = hub.read();
        let last_signal = *self.signal.borrow_and_update();
        let first = ring.first_seq();
        if !self.attached {
            if let Some(front) = ring.front()
                && self.position.is_behind(front)
            {
                return Ready::Behind(front.clone());
            }
            self.cursor = self.cursor.max(first);
            self.attached = true;
        } else if self.cursor < first {
            if last_signal >= self.cursor {
                return Ready::Cut;
            }
            // Nothing dropped concerned it.
            if let Some(front) = ring.front() {
                self.position.join(front);
            }
            self.cursor = first;
        }
        if self.viewer.signal_key().is_some() && last_signal < self.cursor {
            // No batch from the cursor on holds an event of this owner.
            self.skip_to_head(&ring);
            return Ready::Frames(Vec::new());
        }
        let mut frames = Vec::new();
        let skip = (self.cursor - first) as usize;
        for batch in ring.batches.iter().skip(skip) {
            self.take(&batch.items, &mut frames);
            self.cursor = batch.seq + 1;
            if frames.len() >= FRAMES_PER_TAKE {
                break;
            }
        }
        Ready::Frames(frames)
    }

    /// For a heartbeat: moves to the head when nothing held concerns this subscriber,
    /// and gives the point to resume from.
    pub fn idle_position(&mut self) -> String {
        let hub = self.hub.clone();
        let ring = hub.read();
        let last_signal = *self.signal.borrow();
        if self.attached && self.cursor >= ring.first_seq() && last_signal < self.cursor {
            self.skip_to_head(&ring);
        }
        self.position.encode()
    }

    fn skip_to_head(&mut self, ring: &Ring) {
        if let Some(head) = &ring.head {
            self.position.join(head);
        }
        self.cursor = ring.next_seq;
    }

    /// Waits until a batch that may concern this subscriber was released.
    pub async fn changed(&mut self) {
        if self.signal.changed().await.is_err() {
            // The hub is gone with its process: nothing more will come.
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(owner: &str, position: i64) -> Arc<FeedEvent> {
        Arc::new(FeedEvent {
            global_position: position,
            aggregate_type: "Booking".into(),
            aggregate_id: format!("b{position}"),
            event_type: "BookingRequested".into(),
            owner: Some(owner.into()),
            data: format!("{{\"global_position\":{position}}}"),
            sent_at_ms: None,
        })
    }

    fn item(partition: usize, offset: u64, owner: Option<&str>) -> Released {
        Released {
            topic: 0,
            partition,
            offset,
            event: owner.map(|o| event(o, offset as i64 * 10 + partition as i64)),
            sent_at_ms: Some(offset as i64),
        }
    }

    fn viewer(subject: &str) -> Viewer {
        Viewer {
            subject: subject.into(),
            sees_all: false,
        }
    }

    fn frames(ready: Ready) -> Vec<Frame> {
        match ready {
            Ready::Frames(frames) => frames,
            other => panic!("expected frames, got {other:?}"),
        }
    }

    fn positions(frames: &[Frame]) -> Vec<i64> {
        frames.iter().map(|f| f.event.global_position).collect()
    }

    fn started(capacity: usize) -> Arc<Hub> {
        let hub = Hub::new(capacity);
        hub.start_at(FeedPosition::start(1, 2));
        hub
    }

    #[test]
    fn a_subscriber_sees_its_own_events_in_order_and_resumes_exactly() {
        let hub = started(100);
        let mut alice = hub
            .subscribe(viewer("alice"), Filter::default(), None)
            .unwrap();
        let mut admin = hub
            .subscribe(
                Viewer {
                    subject: "root".into(),
                    sees_all: true,
                },
                Filter::default(),
                None,
            )
            .unwrap();
        hub.release(vec![item(0, 0, Some("alice")), item(1, 0, Some("bob"))]);
        hub.release(vec![item(0, 1, None), item(0, 2, Some("alice"))]);
        let seen = frames(alice.take_ready());
        assert_eq!(positions(&seen), vec![0, 20]);
        assert_eq!(positions(&frames(admin.take_ready())), vec![0, 1, 20]);
        // Resuming from the first frame's id gives the rest, once.
        let from = FeedPosition::decode(&seen[0].id, 1, 2).unwrap();
        let mut again = hub
            .subscribe(viewer("alice"), Filter::default(), Some(from))
            .unwrap();
        assert_eq!(positions(&frames(again.take_ready())), vec![20]);
        assert!(frames(again.take_ready()).is_empty());
        // Past the first frame, the first message held is bob's (sent at 0 here).
        assert_eq!(hub.first_sent_after(again.position()), None);
        let from = FeedPosition::decode(&seen[0].id, 1, 2).unwrap();
        assert_eq!(hub.first_sent_after(&from), Some(0));
    }

    #[test]
    fn a_point_older_than_the_ring_is_caught_up_first() {
        let hub = started(2);
        let old = hub.head().unwrap();
        for offset in 0..4 {
            hub.release(vec![item(0, offset, Some("alice"))]);
        }
        let mut late = hub
            .subscribe(viewer("alice"), Filter::default(), Some(old))
            .unwrap();
        let Ready::Behind(upto) = late.take_ready() else {
            panic!("expected to be behind");
        };
        assert_eq!(upto.next_offset(0, 0), Some(2));
        let mut caught = Vec::new();
        late.take(
            &[item(0, 0, Some("alice")), item(0, 1, Some("alice"))],
            &mut caught,
        );
        assert_eq!(positions(&caught), vec![0, 10]);
        assert_eq!(positions(&frames(late.take_ready())), vec![20, 30]);
    }

    #[test]
    fn a_slow_subscriber_is_cut_and_a_quiet_one_is_not() {
        let hub = started(2);
        let mut slow = hub
            .subscribe(viewer("alice"), Filter::default(), None)
            .unwrap();
        let mut quiet = hub
            .subscribe(viewer("carol"), Filter::default(), None)
            .unwrap();
        assert!(frames(slow.take_ready()).is_empty());
        assert!(frames(quiet.take_ready()).is_empty());
        for offset in 0..5 {
            hub.release(vec![item(0, offset, Some("alice"))]);
        }
        assert!(matches!(slow.take_ready(), Ready::Cut));
        assert!(frames(quiet.take_ready()).is_empty());
        // The quiet one's point moved to the head without reading the batches.
        assert_eq!(quiet.position(), &hub.head().unwrap());
        let resume = slow.position().clone();
        assert_eq!(resume.next_offset(0, 0), Some(0));
    }

    #[test]
    fn a_large_release_is_read_in_bounded_pieces() {
        let hub = started(100_000);
        let mut alice = hub
            .subscribe(viewer("alice"), Filter::default(), None)
            .unwrap();
        hub.release(
            (0..5_000)
                .map(|o| item(o as usize % 2, o / 2, Some("alice")))
                .collect(),
        );
        let mut seen = Vec::new();
        loop {
            let taken = frames(alice.take_ready());
            if taken.is_empty() {
                break;
            }
            assert!(
                taken.len() < FRAMES_PER_TAKE + BATCH_MESSAGES,
                "{}",
                taken.len()
            );
            seen.extend(positions(&taken));
        }
        assert_eq!(seen.len(), 5_000);
        assert_eq!(alice.position(), &hub.head().unwrap());
    }

    #[test]
    fn filters_narrow_and_heartbeats_move_a_quiet_point() {
        let hub = started(100);
        let mut only = hub
            .subscribe(
                viewer("alice"),
                Filter {
                    aggregate_type: Some("booking".into()),
                    aggregate_id: Some("B10".into()),
                },
                None,
            )
            .unwrap();
        hub.release(vec![item(0, 0, Some("alice")), item(0, 1, Some("alice"))]);
        assert_eq!(positions(&frames(only.take_ready())), vec![10]);
        let mut bob = hub
            .subscribe(viewer("bob"), Filter::default(), None)
            .unwrap();
        hub.release(vec![item(1, 0, Some("alice"))]);
        let id = bob.idle_position();
        assert_eq!(id, hub.head().unwrap().encode());
    }

    #[test]
    fn owner_signals_are_forgotten_with_their_last_subscriber() {
        let hub = started(10);
        let a = hub
            .subscribe(viewer("alice"), Filter::default(), None)
            .unwrap();
        let b = hub
            .subscribe(viewer("alice"), Filter::default(), None)
            .unwrap();
        drop(a);
        assert_eq!(hub.read().owners.len(), 1);
        drop(b);
        assert!(hub.read().owners.is_empty());
    }
}
