//! Istio's duration strings: what the CRDs' `duration(self)` validation accepts, which is Go's
//! `time.ParseDuration` syntax: one or more decimal numbers, each with an optional fraction
//! and a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), an optional sign: `1.5s`, `100ms`,
//! `2m`, `1h30m`. A bare `0` is zero. There are no days and no spaces.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{0:?} is not a duration: write a number and a unit, e.g. \"1.5s\", \"100ms\", \"2m\"")]
    Syntax(String),
    #[error("{0:?} has unknown unit {1:?}: use one of ns, us, ms, s, m, h")]
    Unit(String, String),
    #[error("{0:?} is negative; durations must be positive")]
    Negative(String),
    #[error("{0:?} is too large")]
    Overflow(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Parses a duration; negative durations are refused (no Istio field takes one).
pub fn parse(text: &str) -> Result<Duration> {
    let syntax = || Error::Syntax(text.to_owned());
    let (negative, rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(syntax());
    }
    let mut total: u128 = 0;
    let mut rest = rest;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_part = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &after_dot[..frac_len];
            rest = &after_dot[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(syntax());
        }
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(rest.len(), |(i, _)| i);
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let nanos_per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(syntax()),
            other => return Err(Error::Unit(text.to_owned(), other.to_owned())),
        };
        let overflow = || Error::Overflow(text.to_owned());
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| overflow())?
        };
        let mut value = int.checked_mul(nanos_per_unit).ok_or_else(overflow)?;
        // The fraction, to nanosecond precision (digits past that cannot matter).
        let mut scale = nanos_per_unit;
        for digit in frac_part.bytes().take(30) {
            scale /= 10;
            value += u128::from(digit - b'0') * scale;
        }
        total = total.checked_add(value).ok_or_else(overflow)?;
        if total > u128::from(u64::MAX) * 1_000_000_000 {
            return Err(overflow());
        }
    }
    if negative && total > 0 {
        return Err(Error::Negative(text.to_owned()));
    }
    let secs =
        u64::try_from(total / 1_000_000_000).map_err(|_| Error::Overflow(text.to_owned()))?;
    // The remainder is below 10^9, so it fits.
    let nanos = (total % 1_000_000_000) as u32;
    Ok(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_go_duration_syntax() {
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse("250µs"), Ok(Duration::from_micros(250)));
        assert_eq!(parse(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("10ns"), Ok(Duration::from_nanos(10)));
    }

    #[test]
    fn refuses_what_istio_refuses() {
        assert!(matches!(parse(""), Err(Error::Syntax(_))));
        assert!(matches!(parse("10"), Err(Error::Syntax(_))));
        assert!(matches!(parse("1 s"), Err(Error::Unit(..))));
        assert!(matches!(parse("1d"), Err(Error::Unit(..))));
        assert!(matches!(parse("s"), Err(Error::Syntax(_))));
        assert!(matches!(parse("-1s"), Err(Error::Negative(_))));
        assert!(matches!(parse("1.s.5"), Err(Error::Syntax(_))));
        assert!(matches!(
            parse("99999999999999999999999999h"),
            Err(Error::Overflow(_))
        ));
    }

    #[test]
    fn error_names_the_input_and_the_fix() {
        let message = parse("5 seconds").unwrap_err().to_string();
        assert!(message.contains("\"5 seconds\""), "{message}");
        assert!(message.contains("ns, us, ms, s, m, h"), "{message}");
    }
}
