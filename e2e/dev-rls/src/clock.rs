//! Time sources for window alignment.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of the current Unix time.
pub trait Clock: Send + Sync {
    /// Time since the Unix epoch.
    fn now(&self) -> Duration;

    /// The clock as a [`ManualClock`] when it is one: it then stands still until told to
    /// move, instead of following real time.
    fn as_manual(&self) -> Option<&ManualClock> {
        None
    }
}

/// The system clock, read in whole seconds as the reference service reads it, so
/// `duration_until_reset` is whole seconds too.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Duration::from_secs(since_epoch.as_secs())
    }
}

/// A clock that only moves when told to, for deterministic tests of window behaviour.
/// Clones share the same time. Nanosecond resolution, up to the year 2554.
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

fn nanos_of(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl ManualClock {
    /// A clock reading `now` whole seconds since the epoch.
    pub fn new(now: u64) -> Self {
        Self::at(Duration::from_secs(now))
    }

    /// A clock reading `now` since the epoch.
    pub fn at(now: Duration) -> Self {
        ManualClock {
            nanos: Arc::new(AtomicU64::new(nanos_of(now))),
        }
    }

    /// Sets the current time (since the epoch).
    pub fn set(&self, now: Duration) {
        self.nanos.store(nanos_of(now), Ordering::SeqCst);
    }

    /// Moves the clock forward by `seconds`.
    pub fn advance(&self, seconds: u64) {
        self.advance_by(Duration::from_secs(seconds));
    }

    /// Moves the clock forward by `by`; returns the new time.
    pub fn advance_by(&self, by: Duration) -> Duration {
        let by = nanos_of(by);
        let moved = self
            .nanos
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                Some(now.saturating_add(by))
            });
        let before = moved.unwrap_or_else(|now| now);
        Duration::from_nanos(before.saturating_add(by))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }

    fn as_manual(&self) -> Option<&ManualClock> {
        Some(self)
    }
}

/// Parses a Unix time in seconds with an optional fraction of up to 9 digits
/// (`1767225600`, `1767225600.25`), as `--clock-at` takes it.
pub fn parse_unix_time(text: &str) -> Result<Duration, String> {
    let bad = || format!("'{text}' is not a Unix time in seconds like 1767225600 or 1767225600.25");
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || (text.contains('.') && !digits(fraction)) || fraction.len() > 9 {
        return Err(bad());
    }
    let seconds: u64 = whole.parse().map_err(|_| bad())?;
    let nanos = if fraction.is_empty() {
        0
    } else {
        let padded = format!("{fraction:0<9}");
        padded.parse::<u32>().map_err(|_| bad())?
    };
    let at = Duration::new(seconds, nanos);
    if at.as_nanos() > u128::from(u64::MAX) {
        return Err(format!("'{text}' is beyond the year 2554"));
    }
    Ok(at)
}

/// Formats a Unix time as seconds with the fraction trimmed (`1767225600.25`), the form
/// [`parse_unix_time`] reads.
pub fn format_unix_time(at: Duration) -> String {
    let nanos = at.subsec_nanos();
    if nanos == 0 {
        return at.as_secs().to_string();
    }
    let fraction = format!("{nanos:09}");
    format!("{}.{}", at.as_secs(), fraction.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn unix_times_parse_with_and_without_a_fraction() {
        assert_eq!(
            parse_unix_time("1767225600").unwrap(),
            Duration::from_secs(1_767_225_600)
        );
        assert_eq!(
            parse_unix_time("1767225600.25").unwrap(),
            Duration::new(1_767_225_600, 250_000_000)
        );
        assert_eq!(
            parse_unix_time("0.000000001").unwrap(),
            Duration::from_nanos(1)
        );
        for bad in [
            "",
            ".",
            "1.",
            ".5",
            "-1",
            "+1",
            "1e9",
            "1.2.3",
            " 1",
            "1.0000000001",
            "x",
            "18446744073.709551616",
        ] {
            assert!(parse_unix_time(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn unix_times_format_as_they_parse() {
        for text in ["1767225600", "1767225600.25", "1.000000001", "0"] {
            assert_eq!(format_unix_time(parse_unix_time(text).unwrap()), text);
        }
    }

    #[test]
    fn manual_clock_moves_only_when_told_to_and_shares_its_time() {
        let clock = ManualClock::at(Duration::new(100, 750_000_000));
        let shared = clock.clone();
        assert_eq!(clock.now(), Duration::new(100, 750_000_000));
        assert_eq!(
            shared.advance_by(Duration::from_millis(500)),
            Duration::new(101, 250_000_000)
        );
        clock.advance(2);
        assert_eq!(clock.now(), Duration::new(103, 250_000_000));
        shared.set(Duration::from_secs(7));
        assert_eq!(clock.now(), Duration::from_secs(7));
        assert!(clock.as_manual().is_some());
        assert!(SystemClock.as_manual().is_none());
        assert_eq!(SystemClock.now().subsec_nanos(), 0);
    }
}
