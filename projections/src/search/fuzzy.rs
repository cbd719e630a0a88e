//! Typo and prefix alternatives that read postings as the search goes.
//!
//! Tantivy's `FuzzyTermQuery` expands its automaton against a segment's term dictionary
//! and then reads every posting of every expanded term into a bitset before the first
//! document is returned. For a common word that is a tenth of the index per clause, on
//! every query, even when the caller stops after twenty matches. [`LazyFuzzy`] expands
//! the same automaton the same way but, for a handful of expanded terms, walks their
//! postings lazily; it matches the same documents with the same constant score, so
//! results do not change, only what is read to produce them.

use std::io;

use tantivy::postings::{SegmentPostings, TermInfo};
use tantivy::query::{
    AutomatonWeight, ConstScorer, DfaWrapper, EmptyScorer, EnableScoring, Explanation,
    FuzzyTermQuery, Query, Scorer, Weight,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::{DocId, DocSet, Score, SegmentReader, TERMINATED, TantivyError};

/// Above this many expanded terms the union is read eagerly, as Tantivy does: a lazy
/// union advances every term on every step.
const MAX_LAZY_TERMS: usize = 8;

/// A [`FuzzyTermQuery`] (typo or prefix) whose postings are read lazily.
#[derive(Clone, Debug)]
pub(crate) struct LazyFuzzy {
    field: Field,
    query: FuzzyTermQuery,
}

impl LazyFuzzy {
    pub(crate) fn new(field: Field, query: FuzzyTermQuery) -> Self {
        Self { field, query }
    }
}

impl Query for LazyFuzzy {
    fn weight(&self, _scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(LazyFuzzyWeight {
            field: self.field,
            terms: AutomatonWeight::new(self.field, self.query.automaton()?),
        }))
    }
}

pub(crate) struct LazyFuzzyWeight {
    field: Field,
    terms: AutomatonWeight<DfaWrapper>,
}

impl Weight for LazyFuzzyWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        let infos = self.terms.get_match_term_infos(reader)?;
        expanded_scorer(reader, self.field, &self.terms, &infos, boost)
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        let mut scorer = self.scorer(reader, 1.0)?;
        if scorer.doc() <= doc && scorer.seek(doc) == doc {
            Ok(Explanation::new("AutomatonScorer", 1.0))
        } else {
            Err(TantivyError::InvalidArgument(
                "Document does not exist".to_string(),
            ))
        }
    }
}

/// The documents of an automaton's expanded terms (`infos`, from `terms`) with a constant
/// score, as Tantivy's automaton weight scores them: lazily for a few terms, through
/// Tantivy's eager bitset for many.
pub(crate) fn expanded_scorer(
    reader: &SegmentReader,
    field: Field,
    terms: &AutomatonWeight<DfaWrapper>,
    infos: &[TermInfo],
    boost: Score,
) -> tantivy::Result<Box<dyn Scorer>> {
    if infos.len() > MAX_LAZY_TERMS {
        return terms.scorer(reader, boost);
    }
    let inverted = reader.inverted_index(field)?;
    let mut postings = infos
        .iter()
        .map(|info| inverted.read_postings_from_terminfo(info, IndexRecordOption::Basic))
        .collect::<io::Result<Vec<_>>>()?;
    Ok(match postings.len() {
        0 => Box::new(EmptyScorer),
        1 => Box::new(ConstScorer::new(postings.remove(0), boost)),
        _ => Box::new(ConstScorer::new(PostingsUnion::new(postings), boost)),
    })
}

/// The documents of a few postings lists, in order, each once.
struct PostingsUnion {
    postings: Vec<SegmentPostings>,
    doc: DocId,
}

impl PostingsUnion {
    fn new(postings: Vec<SegmentPostings>) -> Self {
        let mut union = Self {
            postings,
            doc: TERMINATED,
        };
        union.doc = union.lowest();
        union
    }

    fn lowest(&self) -> DocId {
        self.postings
            .iter()
            .map(DocSet::doc)
            .min()
            .unwrap_or(TERMINATED)
    }
}

impl DocSet for PostingsUnion {
    fn advance(&mut self) -> DocId {
        let current = self.doc;
        for postings in &mut self.postings {
            if postings.doc() == current {
                postings.advance();
            }
        }
        self.doc = self.lowest();
        self.doc
    }

    fn seek(&mut self, target: DocId) -> DocId {
        for postings in &mut self.postings {
            if postings.doc() < target {
                postings.seek(target);
            }
        }
        self.doc = self.lowest();
        self.doc
    }

    fn doc(&self) -> DocId {
        self.doc
    }

    fn size_hint(&self) -> u32 {
        self.postings
            .iter()
            .map(DocSet::size_hint)
            .fold(0u32, u32::saturating_add)
    }
}
