//! The wall clock Chronicle's own decisions read: when a command was issued, when a
//! charge is retried, how long an event waited. Production reads the system clock.
//!
//! `CHRONICLE_CLOCK=offset-file:PATH` shifts it by the signed number of seconds that the
//! file holds (`+3600`, `-30`, `0`), re-read at most once a second: the fault suite
//! moves Chronicle's clock forward this way while the database's clock moves under
//! libfaketime, which cannot be preloaded into Chronicle itself (it deadlocks with
//! jemalloc during start-up; ADR 0032). Time kept by the database (`recorded_at`,
//! `now()` in the scheduler's queries) follows the database server's clock.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// Where the clock's offset comes from, when not the system clock alone.
static OFFSET_FILE: OnceLock<OffsetFile> = OnceLock::new();

struct OffsetFile {
    path: PathBuf,
    /// The offset in seconds and when it was read.
    last: Mutex<Option<(Instant, i64)>>,
}

/// How often the offset file is read again.
const REREAD: Duration = Duration::from_secs(1);

/// What `CHRONICLE_CLOCK` says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ClockSource {
    #[default]
    System,
    /// The system clock shifted by the seconds a file holds.
    OffsetFile(PathBuf),
}

impl std::str::FromStr for ClockSource {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once(':') {
            None if text == "system" => Ok(Self::System),
            Some(("offset-file", path)) if !path.is_empty() => {
                Ok(Self::OffsetFile(PathBuf::from(path)))
            }
            _ => Err("expected `system` or `offset-file:PATH`".to_owned()),
        }
    }
}

/// Makes [`now`] follow `source`. Set once, at start-up; a second call is ignored.
pub fn configure(source: &ClockSource) {
    if let ClockSource::OffsetFile(path) = source {
        let _ = OFFSET_FILE.set(OffsetFile {
            path: path.clone(),
            last: Mutex::new(None),
        });
        tracing::warn!(path = %path.display(), "the wall clock follows an offset file (CHRONICLE_CLOCK)");
    }
}

/// A shift set in-process by [`travel_to`]: zero unless a test moved the clock.
static SHIFT_MILLIS: AtomicI64 = AtomicI64::new(0);

/// Makes [`now`] read `at` from this instant on, and run on at the system clock's pace:
/// the test-only hook through which tests move through months without waiting (issue
/// 15). Nothing in Chronicle calls it; a process started with `CHRONICLE_CLOCK` is moved
/// through its offset file instead.
pub fn travel_to(at: DateTime<Utc>) {
    SHIFT_MILLIS.store((at - Utc::now()).num_milliseconds(), Ordering::SeqCst);
}

/// The current time.
pub fn now() -> DateTime<Utc> {
    let now = Utc::now() + chrono::Duration::milliseconds(SHIFT_MILLIS.load(Ordering::Relaxed));
    match OFFSET_FILE.get() {
        None => now,
        Some(file) => now + chrono::Duration::seconds(file.offset()),
    }
}

impl OffsetFile {
    fn offset(&self) -> i64 {
        let Ok(mut last) = self.last.lock() else {
            return 0;
        };
        match *last {
            Some((at, seconds)) if at.elapsed() < REREAD => seconds,
            previous => {
                // An unreadable file keeps the offset last read.
                let seconds = std::fs::read_to_string(&self.path)
                    .ok()
                    .and_then(|text| text.trim().parse().ok())
                    .unwrap_or(previous.map_or(0, |(_, s)| s));
                *last = Some((Instant::now(), seconds));
                seconds
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ClockSource;
    use std::path::PathBuf;

    #[test]
    fn clock_sources_parse_and_nonsense_is_refused() {
        assert_eq!("system".parse(), Ok(ClockSource::System));
        assert_eq!(
            "offset-file:/tmp/offset".parse(),
            Ok(ClockSource::OffsetFile(PathBuf::from("/tmp/offset")))
        );
        assert!("offset-file:".parse::<ClockSource>().is_err());
        assert!("fixed".parse::<ClockSource>().is_err());
    }
}
