//! The envelope every command travels in: who issued it, when, and which version of the
//! aggregate the issuer last saw.

use chrono::{DateTime, Utc};

use crate::actor::Actor;
use crate::error::DomainError;

/// A command as issued by an actor at an instant.
///
/// `at` is the business time of whatever the command causes; it is supplied by the
/// caller so that deciding stays a pure function.
#[derive(Clone, Debug)]
pub struct Issued<C> {
    pub by: Actor,
    pub at: DateTime<Utc>,
    /// The version the issuer expects the aggregate to be at (`If-Match`).
    pub expected_version: Option<u64>,
    pub command: C,
}

impl<C> Issued<C> {
    /// `command` issued by `by` at `at`, with no version expectation.
    pub fn new(by: Actor, at: DateTime<Utc>, command: C) -> Self {
        Self {
            by,
            at,
            expected_version: None,
            command,
        }
    }

    /// Expects the aggregate to be at `version` (optimistic concurrency).
    #[must_use]
    pub fn expecting(mut self, version: Option<u64>) -> Self {
        self.expected_version = version;
        self
    }
}

/// The checks every command on an existing aggregate passes first: it exists, the actor
/// may act for its owner (otherwise it is reported as not found, so existence does not
/// leak), and the expected version, if any, is current.
pub(crate) fn guard_existing<C>(
    issued: &Issued<C>,
    owner: Option<&str>,
    version: u64,
) -> Result<(), DomainError> {
    match owner {
        Some(owner) if issued.by.may_act_for(owner) => {}
        _ => return Err(DomainError::NotFound),
    }
    match issued.expected_version {
        Some(expected) if expected != version => Err(DomainError::VersionConflict {
            expected,
            actual: version,
        }),
        _ => Ok(()),
    }
}

/// The checks a create command passes first: the id is free and the actor may create
/// for the named owner.
pub(crate) fn guard_new<C>(
    issued: &Issued<C>,
    exists: bool,
    owner: &str,
) -> Result<(), DomainError> {
    if exists {
        return Err(DomainError::AlreadyExists);
    }
    if !issued.by.may_act_for(owner) {
        return Err(DomainError::NotFound);
    }
    Ok(())
}
