//! Money: integer minor units plus an ISO 4217 currency. Never floats.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::currency::ACTIVE_CODES;
use crate::error::DomainError;

/// The largest amount a single command may move, in minor units (10^15: ten trillion
/// units of a two-decimal currency). Balances are kept in `i64` with checked arithmetic.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000_000;

/// An ISO 4217 currency code.
///
/// [`Currency::parse`] accepts only active codes, for new input. Stored events are read
/// back with any three-letter code, so a currency that is later withdrawn from ISO 4217
/// never makes history unreadable.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    /// Validates a client-supplied code against the active ISO 4217 list.
    pub fn parse(code: &str) -> Result<Self, DomainError> {
        if ACTIVE_CODES.binary_search(&code).is_err() {
            return Err(DomainError::invalid(
                "currency",
                format!("unknown ISO 4217 currency code {code:?}"),
            ));
        }
        Self::from_code(code)
    }

    fn from_code(code: &str) -> Result<Self, DomainError> {
        match code.as_bytes() {
            &[a, b, c] if code.bytes().all(|b| b.is_ascii_uppercase()) => Ok(Self([a, b, c])),
            _ => Err(DomainError::invalid(
                "currency",
                "must be three uppercase letters",
            )),
        }
    }

    /// The three-letter code.
    pub fn as_str(&self) -> &str {
        // Only ASCII uppercase letters ever get in, so this cannot fail.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

impl TryFrom<String> for Currency {
    type Error = DomainError;
    fn try_from(code: String) -> Result<Self, Self::Error> {
        Self::from_code(&code)
    }
}

impl From<Currency> for String {
    fn from(currency: Currency) -> Self {
        currency.as_str().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({})", self.as_str())
    }
}

/// A strictly positive amount of minor units, at most [`MAX_AMOUNT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(i64);

impl Amount {
    /// Validates an amount of `field`.
    pub fn new(field: &'static str, minor_units: i64) -> Result<Self, DomainError> {
        if minor_units <= 0 {
            return Err(DomainError::invalid(field, "must be greater than zero"));
        }
        if minor_units > MAX_AMOUNT {
            return Err(DomainError::invalid(
                field,
                format!("must be at most {MAX_AMOUNT}"),
            ));
        }
        Ok(Self(minor_units))
    }

    /// The amount in minor units.
    pub fn get(self) -> i64 {
        self.0
    }
}

/// An amount in a currency, as stored in events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    pub amount: i64,
    pub currency: Currency,
}

impl Money {
    /// A positive amount in a currency.
    pub fn new(amount: Amount, currency: Currency) -> Self {
        Self {
            amount: amount.get(),
            currency,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_active_codes_only() {
        assert_eq!(Currency::parse("EUR").unwrap().as_str(), "EUR");
        assert_eq!(
            Currency::parse("eur").unwrap_err().code(),
            "validation_failed"
        );
        assert!(Currency::parse("ABC").is_err());
        assert!(Currency::parse("EURO").is_err());
    }

    #[test]
    fn stored_codes_deserialize_even_when_withdrawn() {
        let hrk: Currency = serde_json::from_str("\"HRK\"").unwrap();
        assert_eq!(hrk.as_str(), "HRK");
        assert!(serde_json::from_str::<Currency>("\"hr\"").is_err());
    }

    #[test]
    fn amounts_are_positive_and_bounded() {
        assert!(Amount::new("amount", 0).is_err());
        assert!(Amount::new("amount", -5).is_err());
        assert!(Amount::new("amount", MAX_AMOUNT + 1).is_err());
        assert_eq!(Amount::new("amount", MAX_AMOUNT).unwrap().get(), MAX_AMOUNT);
    }
}
