//! When a commit stores a snapshot.

/// Whether a commit of `appended` events stores a snapshot, given that the stream had
/// `since` events after the snapshot it was loaded from (all of them when it had none,
/// or one that no longer decodes): when that makes `every` or more.
///
/// So a load never reads `every` events or more, whatever the stream's past: a stream
/// that lost its snapshot gets a new one at its next commit. The snapshot is taken at
/// the end of the commit, from the aggregate as the command left it (cqrs-es's
/// `EventSink` already applied the events), so its `last_sequence` and its payload
/// always describe the same point. For the single-event commits of a stream that
/// always had its snapshots, this is cqrs-es's rule: a snapshot at every multiple.
pub fn due(since: usize, appended: usize, every: usize) -> bool {
    appended > 0 && since + appended >= every.max(1)
}

#[cfg(test)]
mod tests {
    use super::due;

    /// The sequences a stream takes snapshots at, committing `sizes` in turn.
    fn taken(sizes: &[usize], every: usize) -> Vec<usize> {
        let (mut version, mut snapshot, mut taken) = (0, 0, Vec::new());
        for &size in sizes {
            if due(version - snapshot, size, every) {
                snapshot = version + size;
                taken.push(snapshot);
            }
            version += size;
        }
        taken
    }

    #[test]
    fn single_events_snapshot_at_each_multiple() {
        assert_eq!(taken(&[1; 25], 10), vec![10, 20]);
    }

    #[test]
    fn a_commit_crossing_a_multiple_snapshots_at_its_end() {
        assert_eq!(taken(&[1, 1, 2, 1, 1], 3), vec![4]);
        assert_eq!(taken(&[2, 2, 2, 2], 3), vec![4, 8]);
    }

    #[test]
    fn a_stream_without_a_usable_snapshot_gets_one_at_its_next_commit() {
        assert!(due(1_000, 1, 50));
        assert!(!due(48, 1, 50));
    }

    #[test]
    fn nothing_appended_takes_no_snapshot() {
        assert!(!due(10, 0, 10));
        assert!(!due(0, 0, 1));
    }

    #[test]
    fn every_of_zero_means_every_event() {
        assert!(due(0, 1, 0));
    }
}
