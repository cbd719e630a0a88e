//! The fast plan against the reference plan, on one index of several segments with
//! deleted documents: every page of random searches, followed through its cursors, must
//! be the same — bookings, order, scores to the bit, snippets and cursors.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Duration, TimeZone, Utc};
use tantivy::{IndexWriter, Term};
use uuid::Uuid;

use super::index::{SearchBooking, SearchIndex};
use super::query::{SearchPage, SearchRequest, SearchSort};
use crate::queries::{GuestView, MoneyView};

const NAMES: &[&str] = &[
    "Zoë Adams",
    "Zoey Adamson",
    "Björn Ångström",
    "Chloé Dubois",
    "Marcus Reed",
    "Anaïs Müller",
    "José García",
    "Søren Øster",
    "Amélie Moreau",
    "Windy Rossi",
];
const WORDS: &[&str] = &[
    "window",
    "windows",
    "widow",
    "aisle",
    "wheelchair",
    "access",
    "late",
    "quiet",
    "room",
    "balcony",
    "view",
    "dinner",
    "diner",
    "allergy",
    "parking",
    "front",
    // Also last names, so a word can match the notes and the name.
    "adams",
    "reed",
    "moreau",
];
const STATUSES: &[&str] = &["pending", "confirmed", "cancelled"];

/// xorshift: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

fn epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap()
}

fn booking(rng: &mut Rng, n: usize) -> SearchBooking {
    // Few distinct start times, so equal seconds are common and the id tiebreak counts.
    let starts_at = epoch() + Duration::minutes(rng.below(2_000) as i64);
    let notes: Vec<&str> = (0..rng.below(4)).map(|_| rng.pick(WORDS)).collect();
    let name = rng.pick(NAMES);
    SearchBooking {
        booking_id: Uuid::from_u128(0x5eed_0000 + n as u128 * 7_919),
        account_id: Uuid::from_u128(rng.below(50) as u128),
        owner: format!("user-{}", rng.below(20)),
        resource_id: format!("hall-{}", rng.below(8)),
        seats: vec![format!("S{n}")],
        starts_at,
        ends_at: starts_at + Duration::hours(2),
        price: MoneyView {
            amount: 1_000,
            currency: "EUR".into(),
        },
        guest: GuestView {
            name: name.to_owned(),
            // The first name again, so a word can match the name and the email.
            email: format!(
                "{}.{}@example.org",
                name.split(' ').next().unwrap(),
                rng.below(300)
            ),
        },
        notes: (!notes.is_empty()).then(|| notes.join(" ")),
        status: rng.pick(STATUSES).to_owned(),
        version: 1,
        created_at: epoch(),
        updated_at: epoch(),
        last_position: n as i64,
    }
}

/// Several commits (segments), and a status change of some bookings (deleted copies).
fn build(index: &SearchIndex, rng: &mut Rng) {
    let mut writer: IndexWriter = index.index.writer(32 * 1024 * 1024).unwrap();
    let mut all = Vec::new();
    for n in 0..6_000 {
        let booking = booking(rng, n);
        writer.add_document(index.document(&booking)).unwrap();
        all.push(booking);
        if n % 1_500 == 1_499 {
            writer.commit().unwrap();
        }
    }
    for booking in all.iter_mut().filter(|_| rng.below(7) == 0) {
        booking.status = "cancelled".into();
        booking.version = 2;
        let id = Term::from_field_text(index.fields.booking_id, &booking.booking_id.to_string());
        writer.delete_term(id);
        writer.add_document(index.document(booking)).unwrap();
    }
    writer.commit().unwrap();
    writer.wait_merging_threads().unwrap();
    index.refresh().unwrap();
}

fn request(rng: &mut Rng) -> SearchRequest {
    let text = match rng.below(6) {
        0 => None,
        1 => Some(rng.pick(WORDS).to_owned()),
        2 => Some(format!("{} {}", rng.pick(WORDS), rng.pick(WORDS))),
        3 => Some(rng.pick(NAMES).chars().take(1 + rng.below(4)).collect()),
        4 => Some("wheelchiar zoe".to_owned()),
        _ => Some(format!("{} {}", rng.pick(NAMES), rng.pick(WORDS))),
    };
    let from = (rng.below(3) == 0).then(|| epoch() + Duration::minutes(rng.below(2_000) as i64));
    SearchRequest {
        text,
        owner: (rng.below(4) == 0).then(|| format!("user-{}", rng.below(20))),
        status: (rng.below(2) == 0).then(|| rng.pick(STATUSES).to_owned()),
        resource_id: (rng.below(4) == 0).then(|| format!("hall-{}", rng.below(8))),
        account_id: None,
        from,
        to: from.map(|from| from + Duration::minutes(rng.below(1_500) as i64)),
        sort: if rng.below(2) == 0 {
            SearchSort::StartsAt
        } else {
            SearchSort::Relevance
        },
        limit: 1 + rng.below(30),
        cursor: None,
    }
}

fn summary(page: &SearchPage) -> Vec<(Uuid, u32, String)> {
    page.items
        .iter()
        .map(|hit| {
            (
                hit.booking.booking_id,
                hit.score.to_bits(),
                hit.snippet.clone(),
            )
        })
        .collect()
}

#[test]
fn the_fast_plan_returns_what_the_reference_plan_returns() {
    let dir = std::env::temp_dir().join(format!("chronicle-search-plans-{}", Uuid::new_v4()));
    let index = SearchIndex::open(&dir).unwrap();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    build(&index, &mut rng);
    assert!(index.reader.searcher().segment_readers().len() > 1);
    let (mut pages, mut hits) = (0, 0);
    for _ in 0..400 {
        let mut request = request(&mut rng);
        for _ in 0..4 {
            let fast = index.search(&request).unwrap();
            let reference = index.search_reference(&request).unwrap();
            assert_eq!(summary(&fast), summary(&reference), "{request:?}");
            assert_eq!(fast.next_cursor, reference.next_cursor, "{request:?}");
            pages += 1;
            hits += fast.items.len();
            match fast.next_cursor {
                Some(cursor) => request.cursor = Some(cursor),
                None => break,
            }
        }
    }
    // The comparison saw real pages, not only empty ones.
    assert!(pages > 400 && hits > 2_000, "{pages} pages, {hits} hits");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn segments_hold_documents_in_key_order() {
    let dir = std::env::temp_dir().join(format!("chronicle-search-order-{}", Uuid::new_v4()));
    let index = SearchIndex::open(&dir).unwrap();
    build(&index, &mut Rng(7));
    for segment in index.reader.searcher().segment_readers() {
        let keys = segment.fast_fields().u64("sort_key").unwrap();
        let keys: Vec<u64> = (0..segment.max_doc())
            .map(|doc| keys.first(doc).unwrap())
            .collect();
        assert!(keys.windows(2).all(|pair| pair[0] <= pair[1]));
    }
    std::fs::remove_dir_all(&dir).ok();
}
