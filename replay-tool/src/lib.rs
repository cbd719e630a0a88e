//! `chronicle-replay`, the auditor's CLI over the event store: the history of a stream,
//! an aggregate's state as of a time or version, integrity verification, rebuilding and
//! diffing read models from the store, and streaming export.
//!
//! It reads the event store directly, through read-only transactions, except `rebuild`,
//! which writes fresh read-model tables (or a fresh search index) and swaps them in.
#![allow(clippy::print_stdout, clippy::print_stderr)]

pub mod checkpoints;
pub mod db;
pub mod diff;
pub mod export;
pub mod fold;
pub mod history;
pub mod personal;
pub mod progress;
pub mod rebuild;
pub mod verify;
