//! The temporal read models: each change of an account or a booking closes the current
//! version (its `valid_to`) and opens the next, in transaction time. Only changes that
//! passed their version guard are recorded, so a redelivered event records nothing
//! twice.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Tx;

/// The versions a batch adds to one history table, in the order they happened.
pub(crate) struct Versions<R> {
    pub rows: Vec<Version<R>>,
}

pub(crate) struct Version<R> {
    pub id: Uuid,
    pub sequence: i64,
    pub valid_from: DateTime<Utc>,
    pub state: R,
}

impl<R> Versions<R> {
    pub fn new() -> Self {
        Self { rows: Vec::new() }
    }

    pub fn push(&mut self, id: Uuid, sequence: i64, valid_from: DateTime<Utc>, state: R) {
        self.rows.push(Version {
            id,
            sequence,
            valid_from,
            state,
        });
    }

    /// Each version is valid until the next version of the same aggregate (`None`: still
    /// current).
    pub fn valid_to(&self) -> Vec<Option<DateTime<Utc>>> {
        let mut valid_to = vec![None; self.rows.len()];
        let mut latest: HashMap<Uuid, usize> = HashMap::new();
        for (index, version) in self.rows.iter().enumerate() {
            if let Some(previous) = latest.insert(version.id, index) {
                valid_to[previous] = Some(version.valid_from);
            }
        }
        valid_to
    }

    /// Closes, in `table` (keyed by `key`), the version that was current before each
    /// aggregate's first new version.
    pub async fn close_current(
        &self,
        tx: &mut Tx<'_>,
        table: &str,
        key: &str,
    ) -> Result<(), sqlx::Error> {
        let mut seen = std::collections::HashSet::new();
        let firsts: Vec<&Version<R>> = self.rows.iter().filter(|v| seen.insert(v.id)).collect();
        if firsts.is_empty() {
            return Ok(());
        }
        sqlx::query(&format!(
            "UPDATE {table} h SET valid_to = v.valid_to \
               FROM unnest($1::uuid[], $2::bigint[], $3::timestamptz[]) AS v(id, first, valid_to) \
              WHERE h.{key} = v.id AND h.valid_to IS NULL AND h.sequence < v.first"
        ))
        .bind(firsts.iter().map(|v| v.id).collect::<Vec<_>>())
        .bind(firsts.iter().map(|v| v.sequence).collect::<Vec<_>>())
        .bind(firsts.iter().map(|v| v.valid_from).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub fn ids(&self) -> Vec<Uuid> {
        self.rows.iter().map(|v| v.id).collect()
    }

    pub fn sequences(&self) -> Vec<i64> {
        self.rows.iter().map(|v| v.sequence).collect()
    }

    pub fn valid_froms(&self) -> Vec<DateTime<Utc>> {
        self.rows.iter().map(|v| v.valid_from).collect()
    }

    /// One column of the recorded states.
    pub fn column<T>(&self, field: impl Fn(&R) -> T) -> Vec<T> {
        self.rows.iter().map(|v| field(&v.state)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_version_is_valid_until_the_next_of_the_same_aggregate() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let t = |s: i64| DateTime::<Utc>::from_timestamp(s, 0).unwrap();
        let mut versions = Versions::new();
        versions.push(a, 1, t(10), ());
        versions.push(b, 4, t(11), ());
        versions.push(a, 2, t(12), ());
        versions.push(a, 3, t(13), ());
        assert_eq!(
            versions.valid_to(),
            vec![Some(t(12)), None, Some(t(13)), None]
        );
    }
}
