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

/// The key to seal a subject's new data with.
#[derive(Debug)]
pub struct ForWriting {
    pub version: i32,
    pub key: DataKey,
    /// A key made now, wrapped: the append stores it with the data it seals.
    pub new: Option<NewKeyClaim>,
}

/// A key made by this process and not stored yet, with the claim that makes other
/// writers of this process wait for it (instead of making keys of their own that
/// would lose the race to store): dropped once the append that stores it is done,
/// whatever its outcome.
#[derive(Debug)]
pub struct NewKeyClaim {
    pub wrapped: Wrapped,
    _claim: tokio::sync::OwnedMutexGuard<()>,
}

/// Unwrapped keys by subject and version, with when they were unwrapped, and the
/// version each subject's new data is sealed with, as last seen.
#[derive(Debug, Default)]
struct Cache {
    keys: HashMap<(SubjectId, i32), (DataKey, Instant)>,
    writing: HashMap<SubjectId, i32>,
    /// Subjects whose new key a writer of this process is storing.
    making: HashMap<SubjectId, Arc<tokio::sync::Mutex<()>>>,
}

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
            cache: Arc::new(Mutex::new(Cache::default())),
        }
    }

    /// The master keys (to name subjects).
    pub fn master_keys(&self) -> &MasterKeys {
        &self.keys
    }

    fn cached(&self, subject: &SubjectId, version: i32) -> Option<DataKey> {
        let cache = self.cache.lock().ok()?;
        let (key, at) = cache.keys.get(&(subject.clone(), version))?;
        (at.elapsed() < CACHE_LIFETIME).then(|| key.clone())
    }

    fn remember(&self, subject: &SubjectId, version: i32, key: &DataKey) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.keys.len() >= CACHE_ENTRIES {
                cache
                    .keys
                    .retain(|_, (_, at)| at.elapsed() < CACHE_LIFETIME);
                if cache.keys.len() >= CACHE_ENTRIES {
                    cache.keys.clear();
                }
            }
            cache
                .keys
                .insert((subject.clone(), version), (key.clone(), Instant::now()));
        }
    }

    /// The version `subject`'s new data was last sealed with here, and its key, while
    /// the key is cached.
    fn cached_for_writing(&self, subject: &SubjectId) -> Option<(i32, DataKey)> {
        let version = *self.cache.lock().ok()?.writing.get(subject)?;
        Some((version, self.cached(subject, version)?))
    }

    fn remember_for_writing(&self, subject: &SubjectId, version: i32, key: &DataKey) {
        self.remember(subject, version, key);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.writing.len() >= CACHE_ENTRIES {
                cache.writing.clear();
            }
            cache.writing.insert(subject.clone(), version);
        }
    }

    /// Forgets `subject`'s cached keys (it was erased).
    pub fn forget(&self, subject: &SubjectId) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.keys.retain(|(s, _), _| s != subject);
            cache.writing.remove(subject);
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
    /// new version (the first, or the next after an erasure), generated here and
    /// returned wrapped for the append to store in its own transaction (so a new guest
    /// costs no commit of its own). A new key is remembered only once that append has
    /// committed ([`KeyStore::adopt`]); if another writer stored the same version first,
    /// the append fails as a lost race and the retry reads theirs.
    ///
    /// From the cache while it holds the version last used here: the write path then
    /// costs no query. The version may have been erased meanwhile by another process;
    /// the append's guard (`chronicle_hold_keys`, for every key it did not make) refuses
    /// data sealed under an erased key, and the repository then forgets the subject here
    /// and tries again.
    ///
    /// `connection`, when given, serves the query (a writer holds one already, and a
    /// pool exhausted by writers waiting for this key would have none to give).
    pub async fn for_writing(
        &self,
        subject: &SubjectId,
        connection: Option<&mut sqlx::PgConnection>,
    ) -> Result<ForWriting, StoreError> {
        if let Some((version, key)) = self.cached_for_writing(subject) {
            return Ok(ForWriting {
                version,
                key,
                new: None,
            });
        }
        // One writer of this process at a time makes a subject's new key; the others
        // queue behind it (fairly) and then find the key cached, or take their turn.
        let making = {
            let Ok(mut cache) = self.cache.lock() else {
                return Err(StoreError::Keys("key cache poisoned".into()));
            };
            // Entries nobody holds or waits for.
            cache.making.retain(|_, m| Arc::strong_count(m) > 1);
            cache.making.entry(subject.clone()).or_default().clone()
        };
        let claim = making.lock_owned().await;
        if let Some((version, key)) = self.cached_for_writing(subject) {
            return Ok(ForWriting {
                version,
                key,
                new: None,
            });
        }
        let query = sqlx::query_as(
            "SELECT key_version, master_key_id, wrapped FROM subject_keys \
              WHERE subject_id = $1 ORDER BY key_version DESC LIMIT 1",
        )
        .bind(subject.as_str());
        let newest: Option<Row> = match connection {
            Some(connection) => query.fetch_optional(connection).await?,
            None => query.fetch_optional(&self.pool).await?,
        };
        if let Some(row) = &newest
            && let Some(key) = self.open(subject, row)?
        {
            self.remember_for_writing(subject, row.key_version, &key);
            return Ok(ForWriting {
                version: row.key_version,
                key,
                new: None,
            });
        }
        let version = newest.map_or(1, |row| row.key_version + 1);
        let key = DataKey::generate();
        let wrapped = self.keys.wrap(subject, version, &key);
        Ok(ForWriting {
            version,
            key,
            new: Some(NewKeyClaim {
                wrapped,
                _claim: claim,
            }),
        })
    }

    /// The key to seal `subject`'s new data with, stored now if it is new (outside any
    /// append: for tools and tests; the write path stores new keys with its append).
    pub async fn ensure(&self, subject: &SubjectId) -> Result<(i32, DataKey), StoreError> {
        loop {
            let ForWriting { version, key, new } = self.for_writing(subject, None).await?;
            let Some(NewKeyClaim { wrapped, .. }) = new else {
                return Ok((version, key));
            };
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
                self.adopt(subject, version, &key);
                return Ok((version, key));
            }
            // Another writer made this version first: use theirs.
        }
    }

    /// Remembers a key made by [`for_writing`](Self::for_writing) once the append that
    /// stored it has committed.
    pub fn adopt(&self, subject: &SubjectId, version: i32, key: &DataKey) {
        self.remember_for_writing(subject, version, key);
    }

    /// `subject`'s key `version`, or `None` when it was erased (or never made).
    pub async fn for_reading(
        &self,
        subject: &SubjectId,
        version: i32,
    ) -> Result<Option<DataKey>, StoreError> {
        self.read_key(subject, version, None).await
    }

    /// [`for_reading`](Self::for_reading) on `connection`, which a caller that holds
    /// one must use: a writer that waited for a second connection from its own pool
    /// could wait for ever once every connection is held by a writer doing the same
    /// (the soak's process manager did, with a pool of its own as large as its lanes).
    pub async fn for_reading_on(
        &self,
        subject: &SubjectId,
        version: i32,
        connection: &mut sqlx::PgConnection,
    ) -> Result<Option<DataKey>, StoreError> {
        self.read_key(subject, version, Some(connection)).await
    }

    async fn read_key(
        &self,
        subject: &SubjectId,
        version: i32,
        connection: Option<&mut sqlx::PgConnection>,
    ) -> Result<Option<DataKey>, StoreError> {
        if let Some(key) = self.cached(subject, version) {
            return Ok(Some(key));
        }
        let query = sqlx::query_as(
            "SELECT key_version, master_key_id, wrapped FROM subject_keys \
              WHERE subject_id = $1 AND key_version = $2",
        )
        .bind(subject.as_str())
        .bind(version);
        let row: Option<Row> = match connection {
            Some(connection) => query.fetch_optional(connection).await?,
            None => query.fetch_optional(&self.pool).await?,
        };
        match row {
            Some(row) => self.open(subject, &row),
            None => Ok(None),
        }
    }

    /// Re-wraps up to `batch` keys still under an older master key with the current one;
    /// returns how many. Events are not touched.
    pub async fn rewrap(&self, batch: i64) -> Result<u64, StoreError> {
        let rows: Vec<KeyRow> = sqlx::query_as(
            "SELECT subject_id, key_version, master_key_id, wrapped FROM subject_keys \
              WHERE wrapped IS NOT NULL AND master_key_id <> $1 LIMIT $2",
        )
        .bind(self.keys.current_id())
        .bind(batch)
        .fetch_all(&self.pool)
        .await?;
        let mut done = 0;
        for row in rows {
            let (subject, version, old, key) = unwrap_row(&self.keys, row)?;
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

/// A key row as read: subject, version, master key id, wrapped key.
pub(crate) type KeyRow = (String, i32, String, Vec<u8>);

/// Unwraps `rows` with `keys`, by subject and version.
pub(crate) fn unwrap_rows(
    keys: &MasterKeys,
    rows: Vec<KeyRow>,
) -> Result<HashMap<(SubjectId, i32), DataKey>, StoreError> {
    let mut found = HashMap::with_capacity(rows.len());
    for row in rows {
        let (subject, version, _, key) = unwrap_row(keys, row)?;
        found.insert((subject, version), key);
    }
    Ok(found)
}

/// One key row unwrapped with `keys`: its subject, version, wrapped form and key.
fn unwrap_row(
    keys: &MasterKeys,
    (subject, version, master_key_id, bytes): KeyRow,
) -> Result<(SubjectId, i32, Wrapped, DataKey), StoreError> {
    let subject = SubjectId(subject);
    let wrapped = Wrapped {
        master_key_id,
        bytes,
    };
    let key = keys
        .unwrap(&subject, version, &wrapped)
        .map_err(key_error)?;
    Ok((subject, version, wrapped, key))
}

/// The keys of `wanted` (subject, version) as they are now, read on `connection`
/// without the cache: a reader must not show data erased a moment ago. A version
/// missing from the answer was erased (or never made).
pub async fn current_keys(
    connection: &mut sqlx::PgConnection,
    keys: &MasterKeys,
    wanted: &[(SubjectId, i32)],
) -> Result<HashMap<(SubjectId, i32), DataKey>, StoreError> {
    if wanted.is_empty() {
        return Ok(HashMap::new());
    }
    let subjects: Vec<&str> = wanted.iter().map(|(s, _)| s.as_str()).collect();
    let versions: Vec<i32> = wanted.iter().map(|(_, v)| *v).collect();
    // Planned for each call, with the array and the table as they are then: as a
    // prepared statement its generic plan, made while `subject_keys` was small, scanned
    // the whole table for ever after (never re-analysed where autovacuum is off, as on
    // the test machines); in the soak the search projector's call grew from 0.9 to
    // 15 ms in six minutes.
    let rows: Vec<KeyRow> = sqlx::query_as(
        "SELECT k.subject_id, k.key_version, k.master_key_id, k.wrapped \
           FROM subject_keys k \
           JOIN unnest($1::text[], $2::int[]) AS w(subject_id, key_version) \
             ON (k.subject_id, k.key_version) = (w.subject_id, w.key_version) \
          WHERE k.wrapped IS NOT NULL",
    )
    .persistent(false)
    .bind(&subjects)
    .bind(&versions)
    .fetch_all(connection)
    .await?;
    unwrap_rows(keys, rows)
}

fn key_error(error: KeyError) -> StoreError {
    StoreError::Keys(error.to_string())
}
