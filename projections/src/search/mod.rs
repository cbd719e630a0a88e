//! The search read model: a Tantivy index of bookings, kept by its own projector and
//! queried by `GET /v1/search/bookings`.
//!
//! - [`index`]: the schema, the analyzer (case and accent folding) and document shape.
//! - [`projector`]: applies booking events; commits are batched by count and time and
//!   carry the consumed offsets in the commit payload.
//! - [`query`]: BM25 with prefix and typo tolerance, filters, keyset cursors, snippets.
//!   Under it: `word` (one scorer per query word), `fuzzy` (typo and prefix
//!   alternatives read lazily), `walk` (reads in `starts_at` order that stop at the
//!   page's end) and `collector` (top-k by relevance).

mod collector;
#[cfg(test)]
mod differential;
mod fuzzy;
pub mod index;
pub mod projector;
pub mod query;
mod walk;
mod word;

pub use index::{SearchBooking, SearchIndex};
pub use projector::{SEARCH, SearchProjection, SearchSettings};
pub use query::{SearchHit, SearchPage, SearchRequest, SearchSort};
