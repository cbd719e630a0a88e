//! `subject_keys`: each subject's data keys, wrapped, with a small cache of unwrapped
//! ones so that the write path unwraps a subject's key once a minute at most, not once a
//! command (ADR 0035).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::keys::{DataKey, KeyError, MasterKeys, SubjectId, Wrapped};
use crate::error::StoreError;

/// How long an unwrapped key stays cached.
const CACHE_LIFETIME: Duration = Duration::from_secs(60);
/// How many unwrapped keys the cache holds at most.
const CACHE_ENTRIES: usize = 10_000;

/// The data keys of every subject, as this process can open them.
#[derive(Clone, Debug)]
pub struct KeyStore {
    pool: PgPool,
    keys: Arc<MasterKeys>,
    cache: Arc<Mutex<Cache>>,
}

/// Unwrapped keys by subject and version, with when they were unwrapped.
type Cache = HashMap<(SubjectId, i32), (DataKey, Instant)>;

#[derive(sqlx::FromRow)]
struct Row {
    key_version: i32,
    master_key_id: Option<String>,
    wrapped: Option<Vec<u8>>,
}

impl KeyStore {
    pub fn new(pool: PgPool, keys: Arc<MasterKeys>) -> Self {
        Self {
            pool,
            keys,
            cache: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The master keys (to name subjects).
    pub fn master_keys(&self) -> &MasterKeys {
        &self.keys
    }

    fn cached(&self, subject: &SubjectId, version: i32) -> Option<DataKey> {
        let cache = self.cache.lock().ok()?;
        let (key, at) = cache.get(&(subject.clone(), version))?;
        (at.elapsed() < CACHE_LIFETIME).then(|| key.clone())
    }

    fn remember(&self, subject: &SubjectId, version: i32, key: &DataKey) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_ENTRIES {
                cache.retain(|_, (_, at)| at.elapsed() < CACHE_LIFETIME);
                if cache.len() >= CACHE_ENTRIES {
                    cache.clear();
                }
            }
            cache.insert((subject.clone(), version), (key.clone(), Instant::now()));
        }
    }

    /// Forgets `subject`'s cached keys (it was erased).
    pub fn forget(&self, subject: &SubjectId) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|(s, _), _| s != subject);
        }
    }

    fn open(&self, subject: &SubjectId, row: &Row) -> Result<Option<DataKey>, StoreError> {
        let (Some(master_key_id), Some(bytes)) = (&row.master_key_id, &row.wrapped) else {
            return Ok(None);
        };
        let wrapped = Wrapped {
            master_key_id: master_key_id.clone(),
            bytes: bytes.clone(),
        };
        let key = self
            .keys
            .unwrap(subject, row.key_version, &wrapped)
            .map_err(key_error)?;
        self.remember(subject, row.key_version, &key);
        Ok(Some(key))
    }

    /// The key to seal `subject`'s new data with: its newest version not erased, or a
    /// new version made now (the first, or the next after an erasure).
    pub async fn for_writing(&self, subject: &SubjectId) -> Result<(i32, DataKey), StoreError> {
        loop {
            let newest: Option<Row> = sqlx::query_as(
                "SELECT key_version, master_key_id, wrapped FROM subject_keys \
                  WHERE subject_id = $1 ORDER BY key_version DESC LIMIT 1",
            )
            .bind(subject.as_str())
            .fetch_optional(&self.pool)
            .await?;
            if let Some(row) = &newest {
                if let Some(key) = self.cached(subject, row.key_version) {
                    return Ok((row.key_version, key));
                }
                if let Some(key) = self.open(subject, row)? {
                    return Ok((row.key_version, key));
                }
            }
            let version = newest.map_or(1, |row| row.key_version + 1);
            let key = DataKey::generate();
            let wrapped = self.keys.wrap(subject, version, &key);
            let made = sqlx::query(
                "INSERT INTO subject_keys (subject_id, key_version, master_key_id, wrapped) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(subject.as_str())
            .bind(version)
            .bind(&wrapped.master_key_id)
            .bind(&wrapped.bytes)
            .execute(&self.pool)
            .await?;
            if made.rows_affected() == 1 {
                self.remember(subject, version, &key);
                return Ok((version, key));
            }
            // Another writer made this version first: use theirs.
        }
    }

    /// `subject`'s key `version`, or `None` when it was erased (or never made).
    pub async fn for_reading(
        &self,
        subject: &SubjectId,
        version: i32,
    ) -> Result<Option<DataKey>, StoreError> {
        if let Some(key) = self.cached(subject, version) {
            return Ok(Some(key));
        }
        let row: Option<Row> = sqlx::query_as(
            "SELECT key_version, master_key_id, wrapped FROM subject_keys \
              WHERE subject_id = $1 AND key_version = $2",
        )
        .bind(subject.as_str())
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => self.open(subject, &row),
            None => Ok(None),
        }
    }

    /// Re-wraps up to `batch` keys still under an older master key with the current one;
    /// returns how many. Events are not touched.
    pub async fn rewrap(&self, batch: i64) -> Result<u64, StoreError> {
        let rows: Vec<(String, i32, String, Vec<u8>)> = sqlx::query_as(
            "SELECT subject_id, key_version, master_key_id, wrapped FROM subject_keys \
              WHERE wrapped IS NOT NULL AND master_key_id <> $1 LIMIT $2",
        )
        .bind(self.keys.current_id())
        .bind(batch)
        .fetch_all(&self.pool)
        .await?;
        let mut done = 0;
        for (subject, version, master_key_id, bytes) in rows {
            let subject = SubjectId(subject);
            let old = Wrapped {
                master_key_id,
                bytes,
            };
            let key = self
                .keys
                .unwrap(&subject, version, &old)
                .map_err(key_error)?;
            let new = self.keys.wrap(&subject, version, &key);
            // Only if it is still as read: an erasure meanwhile wins.
            done += sqlx::query(
                "UPDATE subject_keys SET master_key_id = $3, wrapped = $4 \
                  WHERE subject_id = $1 AND key_version = $2 AND wrapped = $5",
            )
            .bind(subject.as_str())
            .bind(version)
            .bind(&new.master_key_id)
            .bind(&new.bytes)
            .bind(&old.bytes)
            .execute(&self.pool)
            .await?
            .rows_affected();
        }
        Ok(done)
    }
}

fn key_error(error: KeyError) -> StoreError {
    StoreError::Keys(error.to_string())
}
