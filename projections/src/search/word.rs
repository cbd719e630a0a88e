//! One query word as one scorer over its alternatives (exact terms per field, typo and
//! prefix expansions), in place of a `BooleanQuery` of `Should` clauses.
//!
//! It matches the same documents and adds the same scores in the same order as
//! Tantivy's union does (a running sum from 0.0 over the matching alternatives, in
//! clause order), so pages are identical to the bit. What it saves: a typo or prefix
//! alternative whose expansion in a segment is only the word itself (the common case:
//! "window" within one edit is "window") matches exactly the documents of the exact
//! alternative on that field, so its postings are not read again; its constant is
//! added, at its place in the sum, whenever the exact term matches. And its `seek`
//! skips in every postings list instead of buffering a window of the union.

use tantivy::postings::TermInfo;
use tantivy::query::{
    AutomatonWeight, DfaWrapper, EmptyScorer, EnableScoring, Explanation, FuzzyTermQuery, Query,
    Scorer, TermQuery, Weight,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::{DocId, DocSet, Score, SegmentReader, TERMINATED, TantivyError, Term};

use super::fuzzy::expanded_scorer;

/// One alternative of a word, with its boost.
#[derive(Clone, Debug)]
pub(crate) enum Alternative {
    /// The word as a term of one field, scored by BM25.
    Exact { term: Term, boost: Score },
    /// The terms an automaton (one edit, or a prefix) accepts, with a constant score.
    Expanded {
        field: Field,
        query: FuzzyTermQuery,
        boost: Score,
    },
}

/// A word: a document matches when any alternative does.
#[derive(Clone, Debug)]
pub(crate) struct WordQuery {
    pub alternatives: Vec<Alternative>,
}

impl Query for WordQuery {
    fn weight(&self, scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        let alternatives = self
            .alternatives
            .iter()
            .map(|alternative| {
                Ok(match alternative {
                    Alternative::Exact { term, boost } => AlternativeWeight::Exact {
                        term: term.clone(),
                        weight: TermQuery::new(term.clone(), IndexRecordOption::WithFreqs)
                            .weight(scoring)?,
                        boost: *boost,
                    },
                    Alternative::Expanded {
                        field,
                        query,
                        boost,
                    } => AlternativeWeight::Expanded {
                        field: *field,
                        terms: AutomatonWeight::new(*field, query.automaton()?),
                        boost: *boost,
                    },
                })
            })
            .collect::<tantivy::Result<_>>()?;
        Ok(Box::new(WordWeight { alternatives }))
    }

    fn query_terms<'a>(&'a self, visitor: &mut dyn FnMut(&'a Term, bool)) {
        for alternative in &self.alternatives {
            if let Alternative::Exact { term, .. } = alternative {
                visitor(term, false);
            }
        }
    }
}

enum AlternativeWeight {
    Exact {
        term: Term,
        weight: Box<dyn Weight>,
        boost: Score,
    },
    Expanded {
        field: Field,
        terms: AutomatonWeight<DfaWrapper>,
        boost: Score,
    },
}

struct WordWeight {
    alternatives: Vec<AlternativeWeight>,
}

/// One postings reader: an exact alternative's scorer, or an expansion's.
struct Part {
    scorer: Box<dyn Scorer>,
    /// The term it reads, for an exact alternative present in the segment.
    term: Option<(Field, TermInfo)>,
}

/// An alternative in clause order: the part whose documents it matches, and its
/// constant score when it is an expansion that reads no postings of its own.
struct Slot {
    part: usize,
    constant: Option<Score>,
}

impl WordWeight {
    /// One part per distinct set of postings, and one slot per alternative naming its part.
    fn parts(
        &self,
        reader: &SegmentReader,
        boost: Score,
    ) -> tantivy::Result<(Vec<Part>, Vec<Slot>)> {
        let mut parts: Vec<Part> = Vec::with_capacity(self.alternatives.len());
        let mut slots = Vec::with_capacity(self.alternatives.len());
        for alternative in &self.alternatives {
            match alternative {
                AlternativeWeight::Exact {
                    term,
                    weight,
                    boost: own,
                } => {
                    let info = reader.inverted_index(term.field())?.get_term_info(term)?;
                    slots.push(Slot {
                        part: parts.len(),
                        constant: None,
                    });
                    parts.push(Part {
                        scorer: weight.scorer(reader, boost * own)?,
                        term: info.map(|info| (term.field(), info)),
                    });
                }
                AlternativeWeight::Expanded {
                    field,
                    terms,
                    boost: own,
                } => {
                    let infos = terms.get_match_term_infos(reader)?;
                    // Expanded to exactly the term of an exact alternative of the same
                    // field: the same documents, so that alternative's postings serve.
                    let same = match infos.as_slice() {
                        [only] => parts
                            .iter()
                            .position(|part| part.term.as_ref() == Some(&(*field, only.clone()))),
                        _ => None,
                    };
                    let part = same.unwrap_or(parts.len());
                    slots.push(Slot {
                        part,
                        constant: Some(boost * own),
                    });
                    if same.is_none() {
                        parts.push(Part {
                            scorer: expanded_scorer(reader, *field, terms, &infos, boost * own)?,
                            term: None,
                        });
                    }
                }
            }
        }
        Ok((parts, slots))
    }
}

/// The parts that can match, with their slots renumbered; `None` when none can.
fn live_parts(parts: Vec<Part>, mut slots: Vec<Slot>) -> Option<(Vec<Part>, Vec<Slot>)> {
    let live: Vec<bool> = parts
        .iter()
        .map(|part| !part.scorer.is::<EmptyScorer>() && part.scorer.doc() != TERMINATED)
        .collect();
    if !live.contains(&true) {
        return None;
    }
    // Dead parts never match: drop them and their slots, renumbering the rest.
    let mut renumbered = Vec::with_capacity(parts.len());
    let mut kept = 0;
    for &alive in &live {
        renumbered.push(kept);
        kept += usize::from(alive);
    }
    slots.retain(|slot| live[slot.part]);
    for slot in &mut slots {
        slot.part = renumbered[slot.part];
    }
    let parts: Vec<Part> = parts
        .into_iter()
        .zip(live)
        .filter_map(|(part, alive)| alive.then_some(part))
        .collect();
    Some((parts, slots))
}

impl Weight for WordWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        let (parts, slots) = self.parts(reader, boost)?;
        let Some((parts, slots)) = live_parts(parts, slots) else {
            return Ok(Box::new(EmptyScorer));
        };
        let mut scorer = WordScorer {
            parts,
            slots,
            doc: 0,
        };
        scorer.doc = scorer.lowest();
        Ok(Box::new(scorer))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        let mut scorer = self.scorer(reader, 1.0)?;
        if scorer.doc() <= doc && scorer.seek(doc) == doc {
            Ok(Explanation::new("word", scorer.score()))
        } else {
            Err(TantivyError::InvalidArgument(format!(
                "document {doc} does not match"
            )))
        }
    }
}

struct WordScorer {
    parts: Vec<Part>,
    slots: Vec<Slot>,
    doc: DocId,
}

impl WordScorer {
    fn lowest(&self) -> DocId {
        self.parts
            .iter()
            .map(|part| part.scorer.doc())
            .min()
            .unwrap_or(TERMINATED)
    }
}

impl DocSet for WordScorer {
    fn advance(&mut self) -> DocId {
        let current = self.doc;
        for part in &mut self.parts {
            if part.scorer.doc() == current {
                part.scorer.advance();
            }
        }
        self.doc = self.lowest();
        self.doc
    }

    fn seek(&mut self, target: DocId) -> DocId {
        for part in &mut self.parts {
            if part.scorer.doc() < target {
                part.scorer.seek(target);
            }
        }
        self.doc = self.lowest();
        self.doc
    }

    fn doc(&self) -> DocId {
        self.doc
    }

    fn size_hint(&self) -> u32 {
        self.parts
            .iter()
            .map(|part| part.scorer.size_hint())
            .fold(0u32, u32::saturating_add)
    }
}

impl Scorer for WordScorer {
    fn score(&mut self) -> Score {
        // A running sum in clause order, as Tantivy's union combines scores.
        let mut sum: Score = 0.0;
        for slot in &self.slots {
            let part = &mut self.parts[slot.part];
            if part.scorer.doc() == self.doc {
                sum += match slot.constant {
                    Some(constant) => constant,
                    None => part.scorer.score(),
                };
            }
        }
        sum
    }
}
