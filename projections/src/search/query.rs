//! Searching bookings: BM25 over guest name, email, notes and resource, with prefix
//! matching on names (type-ahead), one edit of typo tolerance for terms of five or more
//! characters, filters, two orders, keyset cursors and a highlighted snippet per hit.

use std::ops::Bound;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tantivy::query::{
    AllQuery, BooleanQuery, BoostQuery, ConstScoreQuery, FuzzyTermQuery, Occur, Query, RangeQuery,
    TermQuery,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::snippet::SnippetGenerator;
use tantivy::{Searcher, Term};
use uuid::Uuid;

use super::collector::{KeysetTop, Position};
use super::index::{SearchBooking, SearchIndex, analyzer};
use crate::queries::InvalidCursor;

/// Terms this long or longer also match with one edit.
const FUZZY_MIN_CHARS: usize = 5;

/// The order of results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SearchSort {
    /// Best match first (the default).
    #[default]
    Relevance,
    /// Earliest start first.
    StartsAt,
}

/// A search, as the API receives it.
#[derive(Clone, Debug, Default)]
pub struct SearchRequest {
    pub text: Option<String>,
    /// Only this owner's bookings (always set for clients).
    pub owner: Option<String>,
    pub status: Option<String>,
    pub resource_id: Option<String>,
    pub account_id: Option<Uuid>,
    /// `starts_at` at or after.
    pub from: Option<DateTime<Utc>>,
    /// `starts_at` before.
    pub to: Option<DateTime<Utc>>,
    pub sort: SearchSort,
    pub limit: usize,
    pub cursor: Option<String>,
}

/// One hit: the booking, its score and a highlighted snippet.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SearchHit {
    #[serde(flatten)]
    pub booking: SearchBooking,
    pub score: f32,
    /// The best matching fragment with matches in `<b>` tags (HTML-escaped otherwise).
    pub snippet: String,
}

/// A page of hits.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SearchPage {
    pub items: Vec<SearchHit>,
    pub next_cursor: Option<String>,
}

/// Why a search could not run.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error(transparent)]
    InvalidCursor(#[from] InvalidCursor),
    #[error("search index: {0}")]
    Index(#[from] tantivy::TantivyError),
}

fn encode_cursor(position: &Position) -> String {
    URL_SAFE_NO_PAD.encode(format!("s{}:{}", position.score.to_bits(), position.key))
}

fn decode_cursor(cursor: &str) -> Result<Position, InvalidCursor> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| InvalidCursor)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| InvalidCursor)?;
    let (score, key) = text
        .strip_prefix('s')
        .and_then(|t| t.split_once(':'))
        .ok_or(InvalidCursor)?;
    Ok(Position {
        score: f32::from_bits(score.parse().map_err(|_| InvalidCursor)?),
        key: key.parse().map_err(|_| InvalidCursor)?,
    })
}

impl SearchIndex {
    /// Runs a search against the latest commit the reader sees.
    pub fn search(&self, request: &SearchRequest) -> Result<SearchPage, SearchError> {
        let after = request.cursor.as_deref().map(decode_cursor).transpose()?;
        let text_query = self.text_query(request.text.as_deref().unwrap_or(""));
        let by_relevance = request.sort == SearchSort::Relevance && text_query.is_some();
        let query = self.with_filters(request, text_query.as_ref().map(|q| q.box_clone()));
        let searcher = self.reader.searcher();
        let collector = KeysetTop {
            limit: request.limit + 1,
            after,
            by_relevance,
        };
        let mut found = searcher.search(&query, &collector)?;
        let next_cursor = if found.len() > request.limit {
            found.truncate(request.limit);
            found.last().map(|(position, _)| encode_cursor(position))
        } else {
            None
        };
        let snippets = Snippets::new(&searcher, self, text_query.as_deref())?;
        let mut items = Vec::with_capacity(found.len());
        for (position, address) in found {
            let doc = searcher.doc(address)?;
            if let Some(booking) = self.booking_at(&doc) {
                items.push(SearchHit {
                    snippet: snippets.of(&booking),
                    score: position.score,
                    booking,
                });
            }
        }
        Ok(SearchPage { items, next_cursor })
    }

    /// Every word must match somewhere: exactly (BM25, names weigh most), as a prefix of
    /// a name word, or — for words of five characters or more — with one edit.
    fn text_query(&self, text: &str) -> Option<Box<dyn Query>> {
        let mut analyzer = analyzer();
        let mut stream = analyzer.token_stream(text);
        let mut words = Vec::new();
        while stream.advance() {
            words.push(stream.token().text.clone());
        }
        if words.is_empty() {
            return None;
        }
        let f = &self.fields;
        let full_text = [
            (f.name, 3.0),
            (f.email, 1.5),
            (f.notes, 1.0),
            (f.resource_text, 1.0),
        ];
        let per_word: Vec<(Occur, Box<dyn Query>)> = words
            .iter()
            .map(|word| {
                let mut alternatives: Vec<(Occur, Box<dyn Query>)> = Vec::new();
                for (field, boost) in full_text {
                    alternatives.push((Occur::Should, boosted(exact(field, word), boost)));
                    if word.chars().count() >= FUZZY_MIN_CHARS {
                        let fuzzy =
                            FuzzyTermQuery::new(Term::from_field_text(field, word), 1, true);
                        alternatives.push((Occur::Should, boosted(Box::new(fuzzy), boost * 0.3)));
                    }
                }
                let prefix =
                    FuzzyTermQuery::new_prefix(Term::from_field_text(f.name, word), 0, true);
                alternatives.push((Occur::Should, boosted(Box::new(prefix), 0.5)));
                (
                    Occur::Must,
                    Box::new(BooleanQuery::new(alternatives)) as Box<dyn Query>,
                )
            })
            .collect();
        Some(Box::new(BooleanQuery::new(per_word)))
    }

    fn with_filters(&self, request: &SearchRequest, text: Option<Box<dyn Query>>) -> BooleanQuery {
        let f = &self.fields;
        let mut clauses: Vec<(Occur, Box<dyn Query>)> =
            vec![(Occur::Must, text.unwrap_or_else(|| Box::new(AllQuery)))];
        let mut filter = |query: Box<dyn Query>| {
            clauses.push((Occur::Must, Box::new(ConstScoreQuery::new(query, 0.0))))
        };
        for (field, value) in [
            (f.owner, request.owner.clone()),
            (f.status, request.status.clone()),
            (f.resource_id, request.resource_id.clone()),
            (f.account_id, request.account_id.map(|id| id.to_string())),
        ] {
            if let Some(value) = value {
                filter(exact(field, &value));
            }
        }
        if request.from.is_some() || request.to.is_some() {
            let bound = |at: Option<DateTime<Utc>>, inclusive: bool| match at {
                None => Bound::Unbounded,
                Some(at) => {
                    let term = Term::from_field_i64(f.starts_at, at.timestamp_micros());
                    if inclusive {
                        Bound::Included(term)
                    } else {
                        Bound::Excluded(term)
                    }
                }
            };
            filter(Box::new(RangeQuery::new(
                bound(request.from, true),
                bound(request.to, false),
            )));
        }
        BooleanQuery::new(clauses)
    }
}

fn exact(field: Field, value: &str) -> Box<dyn Query> {
    Box::new(TermQuery::new(
        Term::from_field_text(field, value),
        IndexRecordOption::WithFreqs,
    ))
}

fn boosted(query: Box<dyn Query>, boost: f32) -> Box<dyn Query> {
    Box::new(BoostQuery::new(query, boost))
}

/// Highlights a hit's best field: the notes when they match, else the name, else the
/// email, else the resource.
struct Snippets {
    generators: Vec<SnippetGenerator>,
}

impl Snippets {
    fn new(
        searcher: &Searcher,
        index: &SearchIndex,
        query: Option<&dyn Query>,
    ) -> tantivy::Result<Self> {
        let Some(query) = query else {
            return Ok(Self { generators: vec![] });
        };
        let f = &index.fields;
        let generators = [f.notes, f.name, f.email, f.resource_text]
            .into_iter()
            .map(|field| {
                let mut generator = SnippetGenerator::create(searcher, query, field)?;
                generator.set_max_num_chars(160);
                Ok(generator)
            })
            .collect::<tantivy::Result<Vec<_>>>()?;
        Ok(Self { generators })
    }

    fn of(&self, booking: &SearchBooking) -> String {
        let texts = [
            booking.notes.as_deref().unwrap_or(""),
            &booking.guest.name,
            &booking.guest.email,
            &booking.resource_id,
        ];
        for (generator, text) in self.generators.iter().zip(texts) {
            let snippet = generator.snippet(text);
            if !snippet.highlighted().is_empty() {
                return snippet.to_html();
            }
        }
        // Nothing highlighted (a prefix or fuzzy match, or no text at all): the name.
        html_escape(&booking.guest.name)
    }
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_exactly() {
        let position = Position {
            score: 1.234_567_9,
            key: 42,
        };
        assert_eq!(decode_cursor(&encode_cursor(&position)).unwrap(), position);
        assert!(decode_cursor("garbage").is_err());
    }
}
