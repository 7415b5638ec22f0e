//! The `grpc-timeout` wire format, and the plain millisecond header.
//!
//! Shared by every layer that writes or reads the time a call has left: the
//! timeout layer (which re-exports this module as
//! `palisade_timeout::grpc_timeout`) and the retry layer, which rewrites the
//! header on each attempt with the time left at the moment that attempt is
//! sent.
//!
//! gRPC sends the time a client is willing to wait as `grpc-timeout`: at most
//! eight ASCII digits followed by one unit, `H` (hours), `M` (minutes), `S`
//! (seconds), `m` (milliseconds), `u` (microseconds) or `n` (nanoseconds).
//!
//! [`format()`] picks the finest unit whose value fits in eight digits and
//! **rounds down**, so a server is never granted more time than the client
//! has left: `parse(format(d)) <= d` for every `d`. [`parse`] is strict and
//! never panics: an empty value, more than eight digits, a missing or unknown
//! unit, a sign or any other character yields `None`.
//!
//! ```
//! use palisade_core::grpc_timeout::{format, parse};
//! use std::time::Duration;
//!
//! assert_eq!(format(Duration::from_millis(300)), "300000u");
//! assert_eq!(format(Duration::from_nanos(1_500)), "1500n");
//! assert_eq!(format(Duration::from_secs(7_200)), "7200000m");
//! assert_eq!(parse(b"300m"), Some(Duration::from_millis(300)));
//! assert_eq!(parse(b"123456789S"), None); // nine digits
//! assert_eq!(parse(b"-1S"), None);
//! ```

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

/// The header gRPC uses to send a call's timeout.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// [`GRPC_TIMEOUT`] as a header name, built once.
pub const GRPC_TIMEOUT_HEADER: HeaderName = HeaderName::from_static(GRPC_TIMEOUT);

/// The most digits a `grpc-timeout` value may have.
pub const MAX_DIGITS: usize = 8;

const MAX_VALUE: u64 = 99_999_999;

/// The units, finest first, with their length in nanoseconds.
const UNITS: [(u8, u64); 6] = [
    (b'n', 1),
    (b'u', 1_000),
    (b'm', 1_000_000),
    (b'S', 1_000_000_000),
    (b'M', 60 * 1_000_000_000),
    (b'H', 3_600 * 1_000_000_000),
];

/// Parses a `grpc-timeout` value. `None` for anything that is not one to
/// eight ASCII digits followed by one of `H M S m u n`.
pub fn parse(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    let n = parse_digits(digits)?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3_600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Parses a `grpc-timeout` header value (see [`parse`]).
pub fn parse_header(value: &HeaderValue) -> Option<Duration> {
    parse(value.as_bytes())
}

/// Formats `timeout` in the `grpc-timeout` wire format: the finest unit whose
/// value fits in eight digits, rounded down. A timeout beyond
/// 99,999,999 hours is sent as that maximum.
pub fn format(timeout: Duration) -> HeaderValue {
    let mut buf = [0u8; MAX_DIGITS + 1];
    let len = write(timeout, &mut buf);
    match HeaderValue::from_bytes(&buf[..len]) {
        Ok(value) => value,
        // Digits and a unit letter are always a valid header value.
        Err(_) => HeaderValue::from_static("0n"),
    }
}

/// Time left from which [`wire_value`] sends whole milliseconds.
pub const WHOLE_MILLIS_FROM: Duration = Duration::from_millis(100);

/// The `grpc-timeout` value the layers send for `left` (what
/// [`write_shorter`] writes): whole milliseconds, rounded down, once `left`
/// is at least [`WHOLE_MILLIS_FROM`] (at most 1 % less than `left`), else
/// [`format()`]'s finest unit. Rounded down either way, so a server is never
/// granted more time than the client has left.
///
/// Why not always the finest unit: a value in microseconds is new on every
/// call, so it cannot be reused. In whole milliseconds the calls of one
/// millisecond share one value, which each thread keeps in a small cache:
/// sending it costs a reference count, not a formatted, allocated header
/// value, and HPACK finds it in the connection's header table instead of
/// adding a new entry on both ends for every call. (Marking it sensitive,
/// never indexed, was measured and costs more: the header's name then goes
/// out as a literal on every call.)
///
/// ```
/// use palisade_core::grpc_timeout::wire_value;
/// use std::time::Duration;
///
/// assert_eq!(wire_value(Duration::from_micros(299_999)), "299m");
/// assert_eq!(wire_value(Duration::from_secs(30)), "30000m");
/// assert_eq!(wire_value(Duration::from_micros(99_999)), "99999000n");
/// ```
pub fn wire_value(left: Duration) -> HeaderValue {
    // At least 100 ms: whole milliseconds, when they fit in eight digits.
    match u64::try_from(left.as_millis()) {
        Ok(millis) if left >= WHOLE_MILLIS_FROM && millis <= MAX_VALUE => cached_millis(millis),
        _ => format(left),
    }
}

/// How many millisecond values each thread keeps (direct-mapped by value).
const CACHE_SLOTS: usize = 64;

std::thread_local! {
    static MILLIS_VALUES: std::cell::RefCell<[Option<(u64, HeaderValue)>; CACHE_SLOTS]> =
        const { std::cell::RefCell::new([const { None }; CACHE_SLOTS]) };
}

/// `millis` as a `"<millis>m"` value, from this thread's cache
/// when it is there.
fn cached_millis(millis: u64) -> HeaderValue {
    let make = || {
        let mut buf = [0u8; MAX_DIGITS + 1];
        let digits = write_digits(millis, &mut buf);
        buf[digits] = b'm';
        // Its first clone makes the bytes shared; later clones only count
        // references.
        HeaderValue::from_bytes(&buf[..=digits]).unwrap_or_else(|_| HeaderValue::from_static("0n"))
    };
    let slot = (millis % CACHE_SLOTS as u64) as usize;
    MILLIS_VALUES
        .try_with(|cache| {
            let Ok(mut cache) = cache.try_borrow_mut() else {
                return make();
            };
            match &cache[slot] {
                Some((key, value)) if *key == millis => value.clone(),
                _ => {
                    let value = make();
                    cache[slot] = Some((millis, value.clone()));
                    value
                }
            }
        })
        // The thread is being torn down: no cache.
        .unwrap_or_else(|_| make())
}

/// Writes the wire format of `timeout` into `buf`, returning its length.
fn write(timeout: Duration, buf: &mut [u8; MAX_DIGITS + 1]) -> usize {
    // In u64 (584 years of nanoseconds; longer ones are whole hours): a
    // u128 division is a library call, and this runs on every call.
    let (unit, value) = match u64::try_from(timeout.as_nanos()) {
        Err(_) => (b'H', (timeout.as_secs() / 3_600).min(MAX_VALUE)),
        Ok(nanos) => UNITS
            .iter()
            .find_map(|&(unit, len)| {
                let value = nanos / len;
                (value <= MAX_VALUE).then_some((unit, value))
            })
            .unwrap_or((b'H', MAX_VALUE)),
    };
    let digits = write_digits(value, buf);
    buf[digits] = unit;
    digits + 1
}

/// Writes `left` (as [`wire_value`]) as the `grpc-timeout` of `headers`, unless the header
/// already holds a timeout no longer than `left` (a caller's own, shorter
/// `tonic::Request::set_timeout`, or a layer below that already wrote less);
/// returns whether it wrote. A header that does not parse is replaced.
///
/// ```
/// use palisade_core::grpc_timeout::{GRPC_TIMEOUT, write_shorter};
/// use std::time::Duration;
///
/// let mut headers = http::HeaderMap::new();
/// assert!(write_shorter(&mut headers, Duration::from_millis(700)));
/// assert_eq!(headers[GRPC_TIMEOUT], "700m");
/// // A longer time left never replaces a shorter timeout already there.
/// assert!(!write_shorter(&mut headers, Duration::from_secs(1)));
/// assert!(write_shorter(&mut headers, Duration::from_millis(300)));
/// assert_eq!(headers[GRPC_TIMEOUT], "300m");
/// ```
pub fn write_shorter(headers: &mut HeaderMap, left: Duration) -> bool {
    let existing = headers.get(&GRPC_TIMEOUT_HEADER).and_then(parse_header);
    if existing.is_some_and(|existing| existing <= left) {
        return false;
    }
    headers.insert(GRPC_TIMEOUT_HEADER, wire_value(left));
    true
}

/// Parses a plain millisecond header value (one to eight ASCII digits), as
/// sent by [`format_millis`].
pub fn parse_millis(value: &[u8]) -> Option<Duration> {
    parse_digits(value).map(Duration::from_millis)
}

/// Formats `timeout` as whole milliseconds, rounded down, at most eight digits
/// (longer timeouts are sent as 99,999,999 ms, about 27 hours).
pub fn format_millis(timeout: Duration) -> HeaderValue {
    let millis = timeout.as_millis().min(u128::from(MAX_VALUE)) as u64;
    HeaderValue::from(millis)
}

fn parse_digits(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > MAX_DIGITS || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

fn write_digits(mut value: u64, buf: &mut [u8; MAX_DIGITS + 1]) -> usize {
    let mut tmp = [0u8; MAX_DIGITS];
    let mut len = 0;
    loop {
        tmp[len] = b'0' + (value % 10) as u8;
        len += 1;
        value /= 10;
        if value == 0 || len == MAX_DIGITS {
            break;
        }
    }
    for i in 0..len {
        buf[i] = tmp[len - 1 - i];
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse(b"2H"), Some(Duration::from_secs(7_200)));
        assert_eq!(parse(b"3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse(b"4S"), Some(Duration::from_secs(4)));
        assert_eq!(parse(b"5m"), Some(Duration::from_millis(5)));
        assert_eq!(parse(b"6u"), Some(Duration::from_micros(6)));
        assert_eq!(parse(b"7n"), Some(Duration::from_nanos(7)));
    }

    #[test]
    fn parses_zero_and_the_eight_digit_maximum() {
        assert_eq!(parse(b"0n"), Some(Duration::ZERO));
        assert_eq!(parse(b"0S"), Some(Duration::ZERO));
        assert_eq!(parse(b"00000000m"), Some(Duration::ZERO));
        assert_eq!(parse(b"99999999H"), Some(Duration::from_secs(99_999_999 * 3_600)));
        assert_eq!(parse(b"99999999n"), Some(Duration::from_nanos(99_999_999)));
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            &b""[..],
            b"123456789S", // nine digits
            b"000000001m", // nine digits, even with leading zeros
            b"100",        // missing unit
            b"S",          // missing digits
            b"10x",        // unknown unit
            b"10s",        // units are case sensitive: `s` is not seconds
            b"-1S",        // negative
            b"+1S",
            b"1.5S",
            b" 1S",
            b"1S ",
            b"abc",
            b"1SS",
            "१S".as_bytes(), // a non-ASCII digit
        ] {
            assert_eq!(parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn formats_the_finest_unit_and_rounds_down() {
        assert_eq!(format(Duration::ZERO), "0n");
        assert_eq!(format(Duration::from_nanos(99_999_999)), "99999999n");
        assert_eq!(format(Duration::from_nanos(100_000_001)), "100000u");
        assert_eq!(format(Duration::from_millis(300)), "300000u");
        assert_eq!(format(Duration::from_micros(299_999_999)), "299999m");
        assert_eq!(format(Duration::from_secs(100_000)), "100000S");
        assert_eq!(format(Duration::from_secs(99_999_999 * 60 + 59)), "99999999M");
        assert_eq!(format(Duration::MAX), "99999999H");
    }

    #[test]
    fn millis_header_round_trips_and_rejects_garbage() {
        assert_eq!(format_millis(Duration::from_micros(300_999)), "300");
        assert_eq!(parse_millis(b"300"), Some(Duration::from_millis(300)));
        assert_eq!(parse_millis(b"0"), Some(Duration::ZERO));
        for bad in [&b""[..], b"123456789", b"-5", b"5m", b"abc"] {
            assert_eq!(parse_millis(bad), None);
        }
        assert_eq!(format_millis(Duration::MAX), "99999999");
    }

    #[test]
    fn wire_value_sends_whole_millis_from_100ms_and_reuses_them() {
        assert_eq!(wire_value(Duration::from_millis(100)), "100m");
        assert_eq!(wire_value(Duration::from_micros(250_999)), "250m");
        assert_eq!(wire_value(Duration::from_micros(99_999)), "99999000n");
        // Beyond eight digits of milliseconds: the finest unit that fits.
        assert_eq!(wire_value(Duration::from_secs(200_000)), "200000S");
        // The same millisecond twice: the same bytes, shared, not copied.
        let (a, b) = (
            wire_value(Duration::from_millis(777)),
            wire_value(Duration::from_millis(777)),
        );
        assert_eq!(a.as_bytes().as_ptr(), b.as_bytes().as_ptr());
    }

    proptest! {
        #[test]
        fn format_never_grants_more_time_and_fits_eight_digits(secs in 0u64..=u64::MAX, nanos in 0u32..1_000_000_000) {
            let d = Duration::new(secs, nanos);
            let value = format(d);
            let bytes = value.as_bytes();
            prop_assert!(bytes.len() <= MAX_DIGITS + 1);
            let parsed = parse(bytes);
            prop_assert!(parsed.is_some(), "{:?} did not parse", value);
            prop_assert!(parsed.unwrap_or(Duration::MAX) <= d);
        }

        #[test]
        fn format_loses_less_than_one_unit(secs in 0u64..(99_999_999u64 * 3_600), nanos in 0u32..1_000_000_000) {
            let d = Duration::new(secs, nanos);
            let parsed = parse(format(d).as_bytes()).unwrap_or(Duration::MAX);
            // A coarser unit is only chosen when the finer one overflowed, so
            // the value has at least five digits: less than one unit, less
            // than one part in 100,000, is lost.
            let lost = d - parsed;
            prop_assert!(lost.as_nanos() * 100_000 <= d.as_nanos(), "lost {:?} of {:?}", lost, d);
        }

        #[test]
        fn wire_value_never_grants_more_time_and_loses_at_most_one_percent(
            secs in 0u64..=u64::MAX,
            nanos in 0u32..1_000_000_000,
            again in any::<bool>(),
        ) {
            let d = Duration::new(secs, nanos);
            // Twice: the second may come from the thread's cache.
            let value = if again { wire_value(d); wire_value(d) } else { wire_value(d) };
            prop_assert!(value.as_bytes().len() <= MAX_DIGITS + 1);
            let parsed = parse(value.as_bytes());
            prop_assert!(parsed.is_some(), "{:?} did not parse", value);
            let parsed = parsed.unwrap_or(Duration::MAX);
            prop_assert!(parsed <= d);
            if d.as_secs() < 99_999_999 * 3_600 {
                let lost = d - parsed;
                prop_assert!(lost.as_nanos() * 100 <= d.as_nanos(), "lost {:?} of {:?}", lost, d);
            }
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
            let _ = parse(&bytes);
            let _ = parse_millis(&bytes);
        }

        #[test]
        fn millis_round_down(millis in 0u64..=99_999_999, extra in 0u32..1_000_000) {
            let d = Duration::from_millis(millis) + Duration::from_nanos(u64::from(extra));
            prop_assert_eq!(parse_millis(format_millis(d).as_bytes()), Some(Duration::from_millis(millis)));
        }
    }
}
