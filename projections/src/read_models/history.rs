//! The temporal read models: each change of an account or a booking closes the current
//! version (its `valid_to`) and opens the next, in transaction time. Only changes that
//! passed their version guard are recorded, so a redelivered event records nothing
//! twice.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Tx;
use super::unnest::Unnest;

/// The versions a batch adds to one history table, in the order they happened.
pub(crate) struct Versions<R> {
    pub rows: Vec<Version<R>>,
    /// Each aggregate's latest version in `rows`.
    latest: HashMap<Uuid, usize>,
}

#[derive(Debug, PartialEq)]
pub(crate) struct Version<R> {
    pub id: Uuid,
    pub sequence: i64,
    pub valid_from: DateTime<Utc>,
    /// Until the next version of the same aggregate; `None`: still current.
    pub valid_to: Option<DateTime<Utc>>,
    pub state: R,
}

impl<R> Default for Versions<R> {
    fn default() -> Self {
        Self {
            rows: Vec::new(),
            latest: HashMap::new(),
        }
    }
}

impl<R> Versions<R> {
    /// Adds the aggregate's next version, which ends the one before it.
    pub fn push(&mut self, id: Uuid, sequence: i64, valid_from: DateTime<Utc>, state: R) {
        if let Some(previous) = self.latest.insert(id, self.rows.len()) {
            self.rows[previous].valid_to = Some(valid_from);
        }
        self.rows.push(Version {
            id,
            sequence,
            valid_from,
            valid_to: None,
            state,
        });
    }

    /// Writes the versions to `table` (keyed by `key` and `sequence`), with the state's
    /// columns as `columns` binds them, after closing the version each aggregate had
    /// before the batch.
    pub async fn write<'r>(
        &'r self,
        tx: &mut Tx<'_>,
        table: &str,
        key: &'static str,
        columns: impl FnOnce(Unnest<'r, Version<R>>) -> Unnest<'r, Version<R>>,
    ) -> Result<(), sqlx::Error>
    where
        R: Sync,
    {
        if self.rows.is_empty() {
            return Ok(());
        }
        self.close_current(tx, table, key).await?;
        let rows = Unnest::of(&self.rows)
            .column(key, |v| v.id)
            .column("sequence", |v| v.sequence);
        columns(rows)
            .column("valid_from", |v| v.valid_from)
            .column("valid_to", |v| v.valid_to)
            .insert(table, &format!("ON CONFLICT ({key}, sequence) DO NOTHING"))
            .execute(tx)
            .await
    }

    /// Closes, in `table` (keyed by `key`), the version that was current before each
    /// aggregate's first new version.
    async fn close_current(
        &self,
        tx: &mut Tx<'_>,
        table: &str,
        key: &str,
    ) -> Result<(), sqlx::Error> {
        let mut seen = HashSet::new();
        let firsts: Vec<&Version<R>> = self.rows.iter().filter(|v| seen.insert(v.id)).collect();
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_version_is_valid_until_the_next_of_the_same_aggregate() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let t = |s: i64| DateTime::<Utc>::from_timestamp(s, 0).unwrap();
        let mut versions = Versions::default();
        versions.push(a, 1, t(10), ());
        versions.push(b, 4, t(11), ());
        versions.push(a, 2, t(12), ());
        versions.push(a, 3, t(13), ());
        let valid_to: Vec<_> = versions.rows.iter().map(|v| v.valid_to).collect();
        assert_eq!(valid_to, vec![Some(t(12)), None, Some(t(13)), None]);
    }
}
