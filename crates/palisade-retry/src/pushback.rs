//! Server pushback: `Retry-After` and `grpc-retry-pushback-ms`.
//!
//! A server that answers "try again later" may say when. When a response
//! carries one of these headers and the layer decides to retry it, the next
//! attempt starts after exactly that delay instead of the backoff's:
//!
//! - `grpc-retry-pushback-ms: <non-negative integer>` (gRPC's A6 proposal); a
//!   negative or malformed value means "do not retry";
//! - `Retry-After: <seconds>` or `Retry-After: <IMF-fixdate>` (RFC 9110); a
//!   date in the past means "now"; any other form means "do not retry".
//!
//! A delay beyond the layer's `max_pushback` skips the retry: the server asks
//! for more patience than the caller is willing to give. So does one that
//! would end past the call's deadline.
//!
//! An open circuit breaker pushes back too: its
//! [`CircuitOpen::retry_in`](palisade_core::error::CircuitOpen::retry_in) is
//! honoured the same way when no balancer below could send the retry to
//! another peer (see the [crate docs](crate#how-many-and-when)).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

/// The `grpc-retry-pushback-ms` header.
pub const GRPC_RETRY_PUSHBACK_MS: &str = "grpc-retry-pushback-ms";

/// What a server asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushback {
    /// Retry after exactly this delay.
    After(Duration),
    /// Do not retry (a negative or unparseable pushback).
    Stop,
}

/// The pushback in `headers`, if any: `grpc-retry-pushback-ms` first, then
/// `Retry-After`.
pub fn from_headers(headers: &HeaderMap) -> Option<Pushback> {
    if let Some(value) = headers.get(GRPC_RETRY_PUSHBACK_MS) {
        return Some(parse_grpc_pushback(value.as_bytes()));
    }
    headers
        .get(http::header::RETRY_AFTER)
        .map(|value| parse_retry_after(value.as_bytes(), SystemTime::now()))
}

/// Parses a `grpc-retry-pushback-ms` value.
pub fn parse_grpc_pushback(value: &[u8]) -> Pushback {
    match parse_u64(value.trim_ascii()) {
        Some(ms) => Pushback::After(Duration::from_millis(ms)),
        None => Pushback::Stop,
    }
}

/// Parses a `Retry-After` value (delay-seconds or IMF-fixdate), relative to `now`.
pub fn parse_retry_after(value: &[u8], now: SystemTime) -> Pushback {
    let value = value.trim_ascii();
    if let Some(secs) = parse_u64(value) {
        return Pushback::After(Duration::from_secs(secs));
    }
    match parse_imf_fixdate(value) {
        Some(at) => Pushback::After(at.duration_since(now).unwrap_or(Duration::ZERO)),
        None => Pushback::Stop,
    }
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Parses an IMF-fixdate such as `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn parse_imf_fixdate(value: &[u8]) -> Option<SystemTime> {
    // "Sun, 06 Nov 1994 08:49:37 GMT" is exactly 29 bytes.
    if value.len() != 29 || &value[3..5] != b", " || &value[25..] != b" GMT" {
        return None;
    }
    const DAYS: [&[u8]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
    if !DAYS.contains(&&value[..3]) {
        return None;
    }
    let num = |range: std::ops::Range<usize>| parse_u64(&value[range]);
    if value[7] != b' ' || value[11] != b' ' || value[16] != b' ' || value[19] != b':' || value[22] != b':' {
        return None;
    }
    let day = num(5..7)?;
    const MONTHS: [&[u8]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == &value[8..11])? as u64 + 1;
    let year = num(12..16)?;
    let (hour, minute, second) = (num(17..19)?, num(20..22)?, num(23..25)?);
    if !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 || year < 1970 {
        return None;
    }
    let days = days_from_civil(year as i64, month as i64, day as i64);
    let secs = u64::try_from(days).ok()? * 86_400 + hour * 3600 + minute * 60 + second;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_pushback() {
        assert_eq!(
            parse_grpc_pushback(b"2000"),
            Pushback::After(Duration::from_millis(2000))
        );
        assert_eq!(parse_grpc_pushback(b"0"), Pushback::After(Duration::ZERO));
        for bad in [&b"-1"[..], b"abc", b"", b"1.5", b"99999999999999999999"] {
            assert_eq!(parse_grpc_pushback(bad), Pushback::Stop, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after(b"120", now),
            Pushback::After(Duration::from_secs(120))
        );
        assert_eq!(parse_imf_fixdate(b"Sun, 06 Nov 1994 08:49:37 GMT"), Some(now));
        assert_eq!(
            parse_retry_after(b"Sun, 06 Nov 1994 08:49:40 GMT", now),
            Pushback::After(Duration::from_secs(3))
        );
        assert_eq!(
            parse_retry_after(b"Sun, 06 Nov 1994 08:49:00 GMT", now),
            Pushback::After(Duration::ZERO),
            "a past date means now"
        );
        assert_eq!(
            parse_imf_fixdate(b"Tue, 29 Feb 2028 23:59:59 GMT"),
            Some(UNIX_EPOCH + Duration::from_secs(1_835_481_599))
        );
        for bad in [
            &b"-5"[..],
            b"soon",
            b"Sunday, 06-Nov-94 08:49:37 GMT",
            b"Sun, 06 Foo 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, now), Pushback::Stop, "{bad:?}");
        }
    }

    #[test]
    fn grpc_header_wins() {
        let mut headers = HeaderMap::new();
        assert_eq!(from_headers(&headers), None);
        headers.insert("retry-after", "3".parse().unwrap());
        assert_eq!(from_headers(&headers), Some(Pushback::After(Duration::from_secs(3))));
        headers.insert(GRPC_RETRY_PUSHBACK_MS, "-1".parse().unwrap());
        assert_eq!(from_headers(&headers), Some(Pushback::Stop));
    }
}
