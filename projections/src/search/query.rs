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
use super::fuzzy::LazyFuzzy;
use super::index::{SearchBooking, SearchIndex, analyzer};
use super::walk::first_by_key;
use super::word::{Alternative, WordQuery};
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

/// How a search reads the index. Both give the same pages; [`Plan::Reference`] is the
/// first implementation, kept to test the other against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    /// Typo and prefix clauses read lazily; key order read in key order, stopping at
    /// the page's end.
    Fast,
    /// Every match visited by a top-k collector; typo and prefix clauses read eagerly.
    Reference,
}

impl SearchIndex {
    /// Runs a search against the latest commit the reader sees.
    pub fn search(&self, request: &SearchRequest) -> Result<SearchPage, SearchError> {
        self.search_with(request, Plan::Fast)
    }

    /// The same search by the first plan: every match visited, typo clauses read
    /// eagerly. Only for differential tests and the benchmark's check.
    #[doc(hidden)]
    pub fn search_reference(&self, request: &SearchRequest) -> Result<SearchPage, SearchError> {
        self.search_with(request, Plan::Reference)
    }

    fn search_with(&self, request: &SearchRequest, plan: Plan) -> Result<SearchPage, SearchError> {
        let after = request.cursor.as_deref().map(decode_cursor).transpose()?;
        let text_query = self.text_query(request.text.as_deref().unwrap_or(""), plan);
        let by_relevance = request.sort == SearchSort::Relevance && text_query.is_some();
        let query = self.with_filters(request, text_query.as_ref().map(|q| q.box_clone()));
        let searcher = self.reader.searcher();
        let mut found = if by_relevance || plan == Plan::Reference {
            let collector = KeysetTop {
                limit: request.limit + 1,
                after,
                by_relevance,
                skip_by_score: plan == Plan::Fast,
            };
            searcher.search(&query, &collector)?
        } else {
            first_by_key(
                &searcher,
                &query,
                request.limit + 1,
                after.map(|position| position.key),
            )?
        };
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
    fn text_query(&self, text: &str, plan: Plan) -> Option<Box<dyn Query>> {
        let mut analyzer = analyzer();
        let mut stream = analyzer.token_stream(text);
        let mut words = Vec::new();
        while stream.advance() {
            words.push(stream.token().text.clone());
        }
        if words.is_empty() {
            return None;
        }
        let per_word: Vec<(Occur, Box<dyn Query>)> = words
            .iter()
            .map(|word| (Occur::Must, self.word_query(word, plan, words.len())))
            .collect();
        Some(Box::new(BooleanQuery::new(per_word)))
    }

    /// A word's alternatives, in the order their scores add up.
    fn alternatives(&self, word: &str) -> Vec<Alternative> {
        let f = &self.fields;
        let full_text = [
            (f.name, 3.0),
            (f.email, 1.5),
            (f.notes, 1.0),
            (f.resource_text, 1.0),
        ];
        let mut alternatives = Vec::new();
        for (field, boost) in full_text {
            let term = Term::from_field_text(field, word);
            alternatives.push(Alternative::Exact {
                term: term.clone(),
                boost,
            });
            if word.chars().count() >= FUZZY_MIN_CHARS {
                alternatives.push(Alternative::Expanded {
                    field,
                    query: FuzzyTermQuery::new(term, 1, true),
                    boost: boost * 0.3,
                });
            }
        }
        alternatives.push(Alternative::Expanded {
            field: f.name,
            query: FuzzyTermQuery::new_prefix(Term::from_field_text(f.name, word), 0, true),
            boost: 0.5,
        });
        alternatives
    }

    /// One word. With three words or more the fast plan keeps Tantivy's union per word:
    /// an intersection of three adds scores in an order that depends on each side's
    /// cost, which [`WordQuery`] does not reproduce to the bit.
    fn word_query(&self, word: &str, plan: Plan, words: usize) -> Box<dyn Query> {
        let alternatives = self.alternatives(word);
        if plan == Plan::Fast && words <= 2 {
            return Box::new(WordQuery { alternatives });
        }
        let clauses = alternatives
            .into_iter()
            .map(|alternative| {
                let query = match alternative {
                    Alternative::Exact { term, boost } => boosted(
                        Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs)),
                        boost,
                    ),
                    Alternative::Expanded {
                        field,
                        query,
                        boost,
                    } => boosted(plan.read(field, query), boost),
                };
                (Occur::Should, query)
            })
            .collect();
        Box::new(BooleanQuery::new(clauses))
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

impl Plan {
    fn read(self, field: Field, query: FuzzyTermQuery) -> Box<dyn Query> {
        match self {
            Plan::Fast => Box::new(LazyFuzzy::new(field, query)),
            Plan::Reference => Box::new(query),
        }
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
