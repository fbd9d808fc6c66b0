//! Wall-clock helpers. Times leave the gateway as RFC 3339 UTC with
//! milliseconds, so a stored `received_at` reads back exactly.
//!
//! Times that come from outside (a carrier's `occurred_at`) are checked
//! against [`EARLIEST_MS`]..=[`LATEST_MS`] where they enter (`mapping`);
//! formatting still never fails on a time outside that range, because a
//! record written before the check existed must stay readable.

use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::macros::format_description;

/// 1970-01-01T00:00:00.000Z.
pub const EARLIEST_MS: i64 = 0;
/// 9999-12-31T23:59:59.999Z: the last instant RFC 3339 can write.
pub const LATEST_MS: i64 = 253_402_300_799_999;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// Whether a time can be written as RFC 3339 and is not before the epoch.
pub fn in_range(ms: i64) -> bool {
    (EARLIEST_MS..=LATEST_MS).contains(&ms)
}

/// RFC 3339 UTC with milliseconds. Times outside the years 1970–9999 are
/// written as the nearest end of that range; this never panics.
pub fn rfc3339_ms(ms: impl Into<i128>) -> String {
    let ms = ms
        .into()
        .clamp(i128::from(EARLIEST_MS), i128::from(LATEST_MS));
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".to_string())
}

/// An RFC 3339 time given as a bound (a filter, `--since`), in unix
/// milliseconds; one before 1970 is 0. None when it is not one.
pub fn parse_rfc3339_ms(v: &str) -> Option<u64> {
    use time::format_description::well_known::Rfc3339;
    let t = OffsetDateTime::parse(v, &Rfc3339).ok()?;
    Some(u64::try_from((t.unix_timestamp_nanos() / 1_000_000).max(0)).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_with_milliseconds() {
        assert_eq!(rfc3339_ms(1_614_265_330_042u64), "2021-02-25T15:02:10.042Z");
        assert_eq!(rfc3339_ms(0i64), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(LATEST_MS), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn times_outside_the_range_are_clamped_not_panicked_on() {
        assert_eq!(rfc3339_ms(-1i64), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(i64::MIN), "1970-01-01T00:00:00.000Z");
        // Epoch milliseconds read as seconds: the year 57,000.
        assert_eq!(
            rfc3339_ms(1_763_800_000_000_000i64),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(rfc3339_ms(u64::MAX), "9999-12-31T23:59:59.999Z");
        assert!(in_range(0) && in_range(LATEST_MS));
        assert!(!in_range(-1) && !in_range(LATEST_MS + 1));
    }
}
