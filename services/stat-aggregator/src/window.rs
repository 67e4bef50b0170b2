//! Windows of a counter: `total`, the calendar windows `today` / `this_week` / `this_month` in
//! the configured time zone, and rolling windows `last_<n><s|m|h|d>` (e.g. `last_24h`).
//!
//! An event belongs to a window by its `occurred_at`, clamped to "now" (a publisher's clock
//! ahead of ours cannot count into a period that has not started). A calendar window counts
//! the events of the current period and restarts from zero at the period's boundary; a
//! rolling window sums buckets of 1/[`ROLLING_BUCKETS`] of its span, so `last_24h` forgets in
//! 15-minute steps.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// Buckets per rolling window.
pub const ROLLING_BUCKETS: i64 = 96;

/// A calendar period kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Calendar {
    /// Midnight to midnight.
    Day,
    /// Monday 00:00 to Monday 00:00 (ISO weeks).
    Week,
    /// The first of the month 00:00 to the first of the next.
    Month,
}

impl Calendar {
    /// All kinds, in the order [`Periods`] keeps them.
    pub const ALL: [Self; 3] = [Self::Day, Self::Week, Self::Month];

    fn index(self) -> usize {
        match self {
            Self::Day => 0,
            Self::Week => 1,
            Self::Month => 2,
        }
    }
}

/// A parsed window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    /// Everything.
    Total,
    /// The current calendar period.
    Calendar(Calendar),
    /// The last `span` seconds, in buckets of `bucket` seconds.
    Rolling {
        /// Seconds covered.
        span: i64,
        /// Bucket width in seconds.
        bucket: i64,
    },
}

/// Why a window name is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a window (total, today, this_week, this_month, last_<n><s|m|h|d> such as last_24h)"
)]
pub struct WindowError(pub String);

impl WindowSpec {
    /// Parses a window name; the name is also the window's key in snapshots.
    pub fn parse(name: &str) -> Result<Self, WindowError> {
        let err = || WindowError(name.to_owned());
        match name {
            "total" => return Ok(Self::Total),
            "today" => return Ok(Self::Calendar(Calendar::Day)),
            "this_week" => return Ok(Self::Calendar(Calendar::Week)),
            "this_month" => return Ok(Self::Calendar(Calendar::Month)),
            _ => {}
        }
        let rest = name.strip_prefix("last_").ok_or_else(err)?;
        let unit = rest.chars().last().ok_or_else(err)?;
        let amount: i64 = rest[..rest.len() - unit.len_utf8()]
            .parse()
            .map_err(|_| err())?;
        let seconds = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(err()),
        };
        // Canonical spelling only (`last_24h`, not `last_024h`), so one window has one key.
        if amount <= 0 || amount > 366 * 86_400 || format!("last_{amount}{unit}") != name {
            return Err(err());
        }
        let span = amount * seconds;
        Ok(Self::Rolling {
            span,
            bucket: (span / ROLLING_BUCKETS).max(1),
        })
    }
}

/// `[start, end)` of the current day, week and month, in Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Periods {
    tz: TimeZone,
    bounds: [(i64, i64); 3],
}

impl Periods {
    /// The periods containing `now`.
    pub fn at(tz: TimeZone, now: Timestamp) -> Self {
        let bounds = Calendar::ALL.map(|c| period_of(&tz, c, now));
        Self { tz, bounds }
    }

    /// `[start, end)` of the current period of `kind`.
    pub fn bounds(&self, kind: Calendar) -> (i64, i64) {
        self.bounds[kind.index()]
    }

    /// Whether `now` is past the end of the current day (the shortest period).
    pub fn is_stale(&self, now: i64) -> bool {
        now >= self.bounds[0].1
    }

    /// Moves to the periods containing `now`; returns the kinds whose period changed.
    pub fn advance(&mut self, now: Timestamp) -> Vec<Calendar> {
        let mut changed = Vec::new();
        for kind in Calendar::ALL {
            let fresh = period_of(&self.tz, kind, now);
            if fresh != self.bounds[kind.index()] {
                self.bounds[kind.index()] = fresh;
                changed.push(kind);
            }
        }
        changed
    }

    /// The time zone.
    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }
}

fn period_of(tz: &TimeZone, kind: Calendar, at: Timestamp) -> (i64, i64) {
    let date = at.to_zoned_datetime(tz.clone()).date();
    let (start, end) = match kind {
        Calendar::Day => (date, date.checked_add(1.day())),
        Calendar::Week => {
            let monday = date
                .checked_sub(i64::from(date.weekday().to_monday_zero_offset()).days())
                .unwrap_or(date);
            (monday, monday.checked_add(1.week()))
        }
        Calendar::Month => {
            let first = date.first_of_month();
            (first, first.checked_add(1.month()))
        }
    };
    let end = end.unwrap_or(Date::MAX);
    (midnight(tz, start), midnight(tz, end))
}

/// The first instant of `date` in `tz` (midnight, or later on a day whose midnight a DST
/// change skips).
fn midnight(tz: &TimeZone, date: Date) -> i64 {
    date.to_zoned_datetime(tz.clone())
        .and_then(|z| z.start_of_day())
        .map_or(i64::MAX, |z| z.timestamp().as_second())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn names_parse_to_windows_and_only_canonical_spellings() {
        assert_eq!(WindowSpec::parse("total"), Ok(WindowSpec::Total));
        assert_eq!(
            WindowSpec::parse("this_week"),
            Ok(WindowSpec::Calendar(Calendar::Week))
        );
        assert_eq!(
            WindowSpec::parse("last_24h"),
            Ok(WindowSpec::Rolling {
                span: 86_400,
                bucket: 900
            })
        );
        assert_eq!(
            WindowSpec::parse("last_30s"),
            Ok(WindowSpec::Rolling {
                span: 30,
                bucket: 1
            })
        );
        for bad in [
            "",
            "last_",
            "last_h",
            "last_0h",
            "last_024h",
            "last_5y",
            "yesterday",
        ] {
            assert!(WindowSpec::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn periods_follow_the_time_zone_and_dst() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        // 2026-03-29 is the spring-forward Sunday in Berlin: a 23-hour day.
        let p = Periods::at(berlin.clone(), ts("2026-03-29T12:00:00Z"));
        let (s, e) = p.bounds(Calendar::Day);
        assert_eq!(s, ts("2026-03-28T23:00:00Z").as_second());
        assert_eq!(e - s, 23 * 3600);
        // The ISO week of that Sunday started on Monday 2026-03-23 (CET, UTC+1).
        assert_eq!(
            p.bounds(Calendar::Week).0,
            ts("2026-03-22T23:00:00Z").as_second()
        );
        let (ms, me) = p.bounds(Calendar::Month);
        assert_eq!(ms, ts("2026-02-28T23:00:00Z").as_second());
        assert_eq!(me, ts("2026-03-31T22:00:00Z").as_second()); // April starts in CEST
    }

    #[test]
    fn advancing_reports_the_periods_that_rolled() {
        let mut p = Periods::at(TimeZone::UTC, ts("2026-01-31T23:59:59Z"));
        assert!(!p.is_stale(ts("2026-01-31T23:59:59Z").as_second()));
        assert!(p.is_stale(ts("2026-02-01T00:00:00Z").as_second()));
        // Saturday 31 Jan → Sunday 1 Feb: day and month roll, the ISO week does not.
        assert_eq!(
            p.advance(ts("2026-02-01T00:00:00Z")),
            vec![Calendar::Day, Calendar::Month]
        );
        assert!(p.advance(ts("2026-02-01T10:00:00Z")).is_empty());
    }
}
