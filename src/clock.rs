//! Wall-clock helpers. Times leave the gateway as RFC 3339 UTC with
//! milliseconds, so a stored `received_at` reads back exactly.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

pub fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc_with_milliseconds() {
        assert_eq!(
            super::rfc3339_ms(1_614_265_330_042),
            "2021-02-25T15:02:10.042Z"
        );
    }
}
