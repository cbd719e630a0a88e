//! Chronicle's read side: projectors that consume the event topics and maintain the
//! PostgreSQL read tables and the Tantivy search index, and the readers queries use.
//!
//! Empty until the read-side issue lands; see the README's roadmap.
