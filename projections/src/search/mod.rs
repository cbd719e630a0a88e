//! The search read model: a Tantivy index of bookings, kept by its own projector and
//! queried by `GET /v1/search/bookings`.
//!
//! - [`index`]: the schema, the analyzer (case and accent folding) and document shape.
//! - [`projector`]: applies booking events; commits are batched by count and time and
//!   carry the consumed offsets in the commit payload.
//! - [`query`]: BM25 with prefix and typo tolerance, filters, keyset cursors, snippets.

mod collector;
pub mod index;
pub mod projector;
pub mod query;

pub use index::{SearchBooking, SearchIndex};
pub use projector::{SEARCH, SearchProjection, SearchSettings};
pub use query::{SearchHit, SearchPage, SearchRequest, SearchSort};
