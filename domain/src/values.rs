//! Validated value types used in commands. Events store their plain contents, so a rule
//! tightened later never makes history unreadable.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::DomainError;

fn bounded_text(field: &'static str, text: &str, max_chars: usize) -> Result<(), DomainError> {
    if text.trim().is_empty() {
        return Err(DomainError::invalid(field, "must not be empty"));
    }
    if text.chars().count() > max_chars {
        return Err(DomainError::invalid(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(DomainError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

fn identifier(field: &'static str, text: &str, max_len: usize) -> Result<(), DomainError> {
    if text.is_empty() || text.len() > max_len {
        return Err(DomainError::invalid(
            field,
            format!("must be 1 to {max_len} characters"),
        ));
    }
    if !text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/'))
    {
        return Err(DomainError::invalid(
            field,
            "may contain only ASCII letters, digits and - _ . : /",
        ));
    }
    Ok(())
}

/// A client's reference for a deposit or withdrawal; a second movement with the same
/// reference on the same account is a no-op.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference(String);

impl Reference {
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        bounded_text("reference", text, 128)?;
        Ok(Self(text.to_owned()))
    }
    /// The reference naming an id (a payment, a refund): its 36 characters always fit.
    pub fn of_id(id: uuid::Uuid) -> Self {
        Self(id.to_string())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The owner named on a new account: the subject of a principal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner(String);

impl Owner {
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        bounded_text("owner", text, 200)?;
        Ok(Self(text.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A bookable resource (a room, a hall, a vehicle) by its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceId(String);

impl ResourceId {
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        identifier("resource_id", text, 128)?;
        Ok(Self(text.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The seats of one booking: at least one, at most [`Seats::MAX`], each a short
/// identifier, no duplicates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seats(Vec<String>);

impl Seats {
    pub const MAX: usize = 100;

    pub fn parse(seats: &[String]) -> Result<Self, DomainError> {
        if seats.is_empty() {
            return Err(DomainError::invalid(
                "seats",
                "at least one seat is required",
            ));
        }
        if seats.len() > Self::MAX {
            return Err(DomainError::invalid(
                "seats",
                format!("at most {} seats per booking", Self::MAX),
            ));
        }
        let mut unique = BTreeSet::new();
        for seat in seats {
            identifier("seats", seat, 32)?;
            if !unique.insert(seat.as_str()) {
                return Err(DomainError::invalid(
                    "seats",
                    format!("seat {seat:?} is listed twice"),
                ));
            }
        }
        Ok(Self(seats.to_vec()))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

/// The guest a booking is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guest {
    pub name: String,
    pub email: String,
}

impl Guest {
    pub fn parse(name: &str, email: &str) -> Result<Self, DomainError> {
        bounded_text("guest.name", name, 200)?;
        bounded_text("guest.email", email, 254)?;
        let valid_email = match email.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !email.contains(char::is_whitespace)
                    && !domain.contains('@')
            }
            None => false,
        };
        if !valid_email {
            return Err(DomainError::invalid(
                "guest.email",
                "is not an email address",
            ));
        }
        Ok(Self {
            name: name.trim().to_owned(),
            email: email.to_owned(),
        })
    }
}

/// Free text attached to a booking or a state change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note(String);

impl Note {
    pub fn parse(field: &'static str, text: &str) -> Result<Self, DomainError> {
        if text.chars().count() > 2000 {
            return Err(DomainError::invalid(
                field,
                "must be at most 2000 characters",
            ));
        }
        Ok(Self(text.to_owned()))
    }
    /// A note from text the caller controls (a reason code), cut to the maximum length.
    pub fn reason(text: &str) -> Self {
        Self(text.chars().take(2000).collect())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn into_string(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seats(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn seats_must_be_present_unique_and_short() {
        assert!(Seats::parse(&seats(&["A1", "A2"])).is_ok());
        assert!(Seats::parse(&[]).is_err());
        assert!(Seats::parse(&seats(&["A1", "A1"])).is_err());
        assert!(Seats::parse(&seats(&["A 1"])).is_err());
        assert!(Seats::parse(&[("x".repeat(33))]).is_err());
    }

    #[test]
    fn guests_need_a_name_and_a_plausible_email() {
        assert!(Guest::parse("Zoë", "zoe@example.org").is_ok());
        assert!(Guest::parse("", "zoe@example.org").is_err());
        assert!(Guest::parse("Zoë", "zoe.example.org").is_err());
        assert!(Guest::parse("Zoë", "zoe@localhost").is_err());
        assert!(Guest::parse("Zoë", "zo e@example.org").is_err());
    }

    #[test]
    fn references_and_ids_reject_empty_and_control_text() {
        assert!(Reference::parse("inv-42").is_ok());
        assert!(Reference::parse("  ").is_err());
        assert!(Reference::parse("a\u{0}b").is_err());
        assert!(ResourceId::parse("room-101").is_ok());
        assert!(ResourceId::parse("room 101").is_err());
    }
}
