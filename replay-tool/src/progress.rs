//! A progress line on stderr: done of total, rate, ETA. Redrawn at most five times a
//! second, so it costs nothing next to the work.

use std::io::Write;
use std::time::{Duration, Instant};

pub struct Progress {
    label: &'static str,
    total: u64,
    done: u64,
    started: Instant,
    drawn: Instant,
    enabled: bool,
}

impl Progress {
    /// A progress line for `total` items; silent when `enabled` is false.
    pub fn new(label: &'static str, total: u64, enabled: bool) -> Self {
        let now = Instant::now();
        Self {
            label,
            total,
            done: 0,
            started: now,
            drawn: now - Duration::from_secs(1),
            enabled,
        }
    }

    /// Items per second so far.
    pub fn rate(&self) -> f64 {
        self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn done(&self) -> u64 {
        self.done
    }

    /// Counts `n` more items.
    pub fn advance(&mut self, n: u64) {
        self.done += n;
        if self.enabled && self.drawn.elapsed() >= Duration::from_millis(200) {
            self.draw();
        }
    }

    fn draw(&mut self) {
        self.drawn = Instant::now();
        let total = self.total.max(self.done).max(1);
        let fraction = self.done as f64 / total as f64;
        let width = 30;
        let filled = (fraction * width as f64) as usize;
        let rate = self.rate();
        let eta = if rate > 0.0 {
            (total - self.done) as f64 / rate
        } else {
            0.0
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{} [{}{}] {:>5.1}% {}/{} events, {:.0} events/s, ETA {:.0}s   ",
            self.label,
            "=".repeat(filled),
            " ".repeat(width - filled),
            fraction * 100.0,
            self.done,
            total,
            rate,
            eta
        );
        let _ = err.flush();
    }

    /// Draws the final state and ends the line.
    pub fn finish(&mut self) {
        if self.enabled {
            self.draw();
            eprintln!();
        }
    }
}
