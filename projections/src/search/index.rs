//! The search index: schema, analyzer, documents, and what its commits record.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tantivy::collector::TopDocs;
use tantivy::directory::{Directory, MmapDirectory, WatchCallback, WatchHandle};
use tantivy::query::TermQuery;
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing,
    TextOptions, Value,
};
use tantivy::tokenizer::{
    AsciiFoldingFilter, LowerCaser, RemoveLongFilter, SimpleTokenizer, TextAnalyzer,
};
use tantivy::{
    Index, IndexReader, IndexSettings, IndexSortByField, Order, ReloadPolicy, TantivyDocument, Term,
};
use uuid::Uuid;

use crate::consumer::PartitionKey;
use crate::queries::{GuestView, MoneyView};

/// The analyzer of every full-text field: words, lower-cased, accents folded
/// ("Zoë" and "ZOE" both index as "zoe").
pub const ANALYZER: &str = "chronicle_text";

/// Decompressed document-store blocks each segment's reader caches (see `open`).
const STORE_CACHE_BLOCKS: usize = 8;

/// A booking as the index stores and returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SearchBooking {
    pub booking_id: Uuid,
    pub account_id: Uuid,
    pub owner: String,
    pub resource_id: String,
    pub seats: Vec<String>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub price: MoneyView,
    pub guest: GuestView,
    pub notes: Option<String>,
    pub status: String,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_position: i64,
}

impl SearchBooking {
    /// The keyset of the `starts_at` order: seconds in the high bits, a hash of the id in
    /// the low 30, so bookings that start together still have distinct keys.
    pub fn sort_key(&self) -> u64 {
        let seconds = self.starts_at.timestamp().max(0) as u64;
        let tiebreak = (self.booking_id.as_u128() as u64) & ((1 << 30) - 1);
        (seconds << 30) | tiebreak
    }
}

/// The fields of the schema.
#[derive(Clone, Copy, Debug)]
pub struct Fields {
    pub booking_id: Field,
    pub owner: Field,
    pub account_id: Field,
    pub resource_id: Field,
    pub status: Field,
    pub name: Field,
    pub email: Field,
    pub notes: Field,
    pub resource_text: Field,
    pub starts_at: Field,
    pub sort_key: Field,
    pub document: Field,
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let text = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(ANALYZER)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let fields = Fields {
        booking_id: builder.add_text_field("booking_id", STRING),
        owner: builder.add_text_field("owner", STRING),
        account_id: builder.add_text_field("account_id", STRING),
        resource_id: builder.add_text_field("resource_id", STRING),
        status: builder.add_text_field("status", STRING),
        name: builder.add_text_field("name", text.clone()),
        email: builder.add_text_field("email", text.clone()),
        notes: builder.add_text_field("notes", text.clone()),
        resource_text: builder.add_text_field("resource", text),
        starts_at: builder.add_i64_field("starts_at", INDEXED | FAST),
        sort_key: builder.add_u64_field("sort_key", INDEXED | FAST),
        document: builder.add_text_field("document", STORED),
    };
    (builder.build(), fields)
}

/// Documents are stored in `sort_key` order (Tantivy sorts each segment when it is
/// written and keeps merged segments sorted), so a read in `starts_at` order walks doc
/// ids forward and stops at the page's end (see `walk`).
fn settings() -> IndexSettings {
    IndexSettings {
        sort_by_field: Some(IndexSortByField {
            field: "sort_key".to_owned(),
            order: Order::Asc,
        }),
        ..IndexSettings::default()
    }
}

/// The analyzer used for indexing and for queries alike.
pub fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(64))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build()
}

/// The index on disk, and a reader over its latest commit.
pub struct SearchIndex {
    pub(crate) index: Index,
    pub(crate) reader: IndexReader,
    pub(crate) fields: Fields,
    dir: PathBuf,
    /// The directory the index reads through, kept to prune its map cache (see
    /// [`prune_mmap_cache`]).
    mmap: MmapDirectory,
    /// Prunes that cache at every commit this process sees, its own or another's
    /// (a `serve` process only reads); dropping the handle would stop it.
    _pruning: WatchHandle,
}

/// Drops the entries of files no longer mapped from `mmap`'s cache and sets how many
/// files stay mapped on `chronicle_search_mapped_files`.
///
/// Tantivy's `MmapDirectory` remembers every file it ever mapped, by path, with a weak
/// reference to the map, and forgets an entry only when the same path is opened again
/// or when `get_cache_info` is called; deleting a file does not. Segment and delete
/// files have fresh names, and the projector writes a segment at every commit (every
/// 500 ms), so the cache grew by one path, one weak reference and its table slot for
/// every file the index ever had: about 0.6 MiB a minute at 400 operations/s, the
/// soak's creeping heap (docs/soak.md, ADR 0031). `get_cache_info` is the one public
/// way to prune.
fn prune_mmap_cache(mmap: &MmapDirectory) {
    let mapped = mmap.get_cache_info().mmapped.len();
    crate::metrics::SEARCH_MAPPED_FILES.set(mapped as i64);
}

impl SearchIndex {
    /// Opens the index in `dir`, creating it (or recreating it, when the schema or the
    /// document order changed: it is derived data and rebuilds from the topics).
    pub fn open(dir: &Path) -> tantivy::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let (schema, fields) = schema();
        // One directory for the writer and every reader of this index, so that one
        // cache holds every map this process makes (see `prune_mmap_cache`).
        let mmap = MmapDirectory::open(dir)?;
        let create = |schema| {
            if Index::exists(&mmap)? {
                return Err(tantivy::TantivyError::IndexAlreadyExists);
            }
            Index::create(mmap.clone(), schema, settings())
        };
        let index = match Index::open(mmap.clone()) {
            Ok(index)
                if index.schema() == schema
                    && index.settings().sort_by_field == settings().sort_by_field =>
            {
                index
            }
            Ok(_) => {
                tracing::warn!(dir = %dir.display(), "search index schema or order changed; rebuilding from the topics");
                for entry in std::fs::read_dir(dir)? {
                    let path = entry?.path();
                    if path.is_dir() {
                        std::fs::remove_dir_all(&path)?;
                    } else {
                        std::fs::remove_file(&path)?;
                    }
                }
                create(schema)?
            }
            // Another process (or role) may be creating it at the same moment.
            Err(_) => create(schema).or_else(|_| Index::open(mmap.clone()))?,
        };
        index.tokenizers().register(ANALYZER, analyzer());
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::OnCommitWithDelay)
            // Each segment's store reader keeps this many decompressed 16 KiB blocks.
            // With tantivy's default (100) the projector's look-ups of a booking before
            // changing it, spread over the whole index, could fill up to 1.6 MiB per
            // segment; a query reads a page of documents, which a few blocks serve.
            // (This bound did not change the soak's creeping heap: docs/soak.md.)
            .doc_store_cache_num_blocks(STORE_CACHE_BLOCKS)
            .try_into()?;
        let pruned = mmap.clone();
        let pruning = index.directory().watch(WatchCallback::new(move || {
            prune_mmap_cache(&pruned);
        }))?;
        Ok(Self {
            index,
            reader,
            fields,
            dir: dir.to_owned(),
            mmap,
            _pruning: pruning,
        })
    }

    /// Where the index lives.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Picks up the latest commit now rather than after the reload delay, and forgets
    /// the files that commit (and the merges before it) left unmapped.
    pub fn refresh(&self) -> tantivy::Result<()> {
        self.reader.reload()?;
        prune_mmap_cache(&self.mmap);
        Ok(())
    }

    /// The offsets recorded by the last commit (none before the first commit). A
    /// payload that does not read is an error: starting again from offset zero would
    /// re-index everything without a word.
    pub fn committed_offsets(&self) -> tantivy::Result<HashMap<PartitionKey, i64>> {
        let Some(payload) = self.index.load_metas()?.payload else {
            return Ok(HashMap::new());
        };
        CommitPayload::read(&payload)
            .map(CommitPayload::offsets)
            .map_err(|reason| {
                tantivy::TantivyError::InternalError(format!(
                    "the search index's last commit records unreadable offsets ({reason}); \
                     rebuild it with `chronicle-replay rebuild search`"
                ))
            })
    }

    /// The indexed booking `id`, as of the latest commit the reader sees.
    pub fn get(&self, id: Uuid) -> tantivy::Result<Option<SearchBooking>> {
        let searcher = self.reader.searcher();
        let query = TermQuery::new(
            Term::from_field_text(self.fields.booking_id, &id.to_string()),
            IndexRecordOption::Basic,
        );
        let top = searcher.search(&query, &TopDocs::with_limit(1).order_by_score())?;
        match top.first() {
            Some((_, address)) => Ok(self.booking_at(&searcher.doc(*address)?)),
            None => Ok(None),
        }
    }

    /// How many documents the index holds for booking `id` (exactly one once indexed).
    pub fn copies(&self, id: Uuid) -> tantivy::Result<usize> {
        let query = TermQuery::new(
            Term::from_field_text(self.fields.booking_id, &id.to_string()),
            IndexRecordOption::Basic,
        );
        self.reader
            .searcher()
            .search(&query, &tantivy::collector::Count)
    }

    /// How many documents the index's postings hold with `word` (analyzed as the text
    /// fields are) in a guest's name, e-mail or notes, deleted documents included: what
    /// its files still hold, not what searches find.
    pub fn stored_postings(&self, word: &str) -> tantivy::Result<u64> {
        let searcher = self.reader.searcher();
        let mut analyzer = analyzer();
        let mut stream = analyzer.token_stream(word);
        let mut total = 0;
        while let Some(token) = stream.next() {
            for field in [self.fields.name, self.fields.email, self.fields.notes] {
                total += searcher.doc_freq(&Term::from_field_text(field, &token.text))?;
            }
        }
        Ok(total)
    }

    /// How many bookings the index holds.
    pub fn len(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Whether the index holds no booking.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn booking_at(&self, doc: &TantivyDocument) -> Option<SearchBooking> {
        doc.get_first(self.fields.document)
            .and_then(|v| v.as_str())
            .and_then(|json| serde_json::from_str(json).ok())
    }

    /// The Tantivy document of a booking.
    pub(crate) fn document(&self, booking: &SearchBooking) -> TantivyDocument {
        let f = &self.fields;
        let mut doc = TantivyDocument::default();
        doc.add_text(f.booking_id, booking.booking_id.to_string());
        doc.add_text(f.owner, &booking.owner);
        doc.add_text(f.account_id, booking.account_id.to_string());
        doc.add_text(f.resource_id, &booking.resource_id);
        doc.add_text(f.status, &booking.status);
        doc.add_text(f.name, &booking.guest.name);
        doc.add_text(f.email, &booking.guest.email);
        if let Some(notes) = &booking.notes {
            doc.add_text(f.notes, notes);
        }
        doc.add_text(f.resource_text, &booking.resource_id);
        doc.add_i64(f.starts_at, booking.starts_at.timestamp_micros());
        doc.add_u64(f.sort_key, booking.sort_key());
        doc.add_text(
            f.document,
            serde_json::to_string(booking).unwrap_or_default(),
        );
        doc
    }
}

/// What a commit records besides the documents: the next offset of each partition.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct CommitPayload {
    /// "topic/partition" → next offset.
    pub offsets: HashMap<String, i64>,
}

impl CommitPayload {
    pub(crate) fn from_offsets(offsets: &HashMap<PartitionKey, i64>) -> Self {
        Self {
            offsets: offsets
                .iter()
                .map(|((topic, partition), next)| (format!("{topic}/{partition}"), *next))
                .collect(),
        }
    }

    /// Reads a commit's payload, every key included.
    fn read(payload: &str) -> Result<Self, String> {
        let read: Self = serde_json::from_str(payload).map_err(|e| e.to_string())?;
        if let Some(key) = read.offsets.keys().find(|key| {
            key.rsplit_once('/')
                .is_none_or(|(_, partition)| partition.parse::<i32>().is_err())
        }) {
            return Err(format!("key {key:?} is not topic/partition"));
        }
        Ok(read)
    }

    fn offsets(self) -> HashMap<PartitionKey, i64> {
        self.offsets
            .into_iter()
            .filter_map(|(key, next)| {
                let (topic, partition) = key.rsplit_once('/')?;
                Some(((topic.to_owned(), partition.parse().ok()?), next))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_payload_reads_back_its_offsets() {
        let offsets = HashMap::from([(("t.booking".to_owned(), 3), 17_i64)]);
        let written = serde_json::to_string(&CommitPayload::from_offsets(&offsets)).unwrap();
        assert_eq!(CommitPayload::read(&written).unwrap().offsets(), offsets);
    }

    #[test]
    fn an_unreadable_commit_payload_is_an_error_not_offset_zero() {
        assert!(CommitPayload::read("{\"offsets\": ").is_err());
        assert!(CommitPayload::read("[1, 2]").is_err());
        let bad_key = CommitPayload::read(r#"{"offsets": {"t.booking": 4}}"#).unwrap_err();
        assert_eq!(bad_key, "key \"t.booking\" is not topic/partition");
        assert!(CommitPayload::read(r#"{"offsets": {"t.booking/x": 4}}"#).is_err());
    }
}
