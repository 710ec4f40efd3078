//! Where timestamps come from: the wall clock in services, a logical clock in
//! deterministic runs, so that the same schedule gives the same bytes.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, TimeDelta, Utc};

/// A source of `time_updated` values.
pub trait Clock: Send + Sync + fmt::Debug {
    /// A timestamp to store: a logical clock moves on with every one.
    fn now(&self) -> DateTime<Utc>;

    /// The time, to decide something by (a cooldown, say) without storing it.
    /// Reading it changes nothing, so a deterministic run's future does not
    /// depend on who looked.
    fn peek(&self) -> DateTime<Utc> {
        self.now()
    }
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that starts at a fixed instant and moves one millisecond per reading.
#[derive(Debug)]
pub struct LogicalClock {
    start: DateTime<Utc>,
    ticks: AtomicU64,
}

impl LogicalClock {
    pub fn starting_at(start: DateTime<Utc>) -> Self {
        LogicalClock { start, ticks: AtomicU64::new(0) }
    }
}

impl Default for LogicalClock {
    /// Starts at the minute of the #7282 log, 2024-12-18T23:42:00Z.
    fn default() -> Self {
        Self::starting_at(DateTime::from_timestamp(1_734_565_320, 0).unwrap_or_default())
    }
}

impl Clock for LogicalClock {
    fn now(&self) -> DateTime<Utc> {
        let t = self.ticks.fetch_add(1, Ordering::Relaxed);
        self.at(t)
    }

    fn peek(&self) -> DateTime<Utc> {
        self.at(self.ticks.load(Ordering::Relaxed))
    }
}

impl LogicalClock {
    /// How many timestamps it has handed out: how far it has moved on.
    pub fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    fn at(&self, ticks: u64) -> DateTime<Utc> {
        let ms = i64::try_from(ticks).unwrap_or(i64::MAX);
        self.start + TimeDelta::milliseconds(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logical_clock_is_deterministic_and_monotonic() {
        let (a, b) = (LogicalClock::default(), LogicalClock::default());
        let ra: Vec<_> = (0..3).map(|_| a.now()).collect();
        let rb: Vec<_> = (0..3).map(|_| b.now()).collect();
        assert_eq!(ra, rb);
        assert!(ra[0] < ra[1] && ra[1] < ra[2]);
        assert_eq!(ra[0].to_rfc3339(), "2024-12-18T23:42:00+00:00");
    }

    #[test]
    fn peeking_does_not_move_the_logical_clock() {
        let c = LogicalClock::default();
        let first = c.now();
        assert_eq!(c.peek(), c.peek());
        assert!(c.peek() > first);
        assert_eq!(c.now(), c.peek() - TimeDelta::milliseconds(1));
    }
}
