//! `chronicle-replay`, the auditor's CLI over the event store.
//!
//! Empty until the auditing issue lands; see the README's roadmap.
