//! Percent-decoding of query strings and `application/x-www-form-urlencoded` bodies, and the
//! percent-encoding of cookie values.

/// Decodes `%XX` escapes and `+` (as space); invalid escapes are kept as they are.
pub(crate) fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits `a=1&b=2` into decoded pairs, in order; a bare `a` gives `("a", "")`.
pub(crate) fn form_pairs(input: &str) -> Vec<(String, String)> {
    input
        .split('&')
        .filter(|part| !part.is_empty())
        .map(|part| match part.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(part), String::new()),
        })
        .collect()
}

/// Encodes everything outside RFC 6265's cookie-octet set (and `%`, `+`) as `%XX`.
pub(crate) fn percent_encode_cookie(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        let safe = matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
            && b != b'%'
            && b != b'+';
        if safe {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_handles_escapes_plus_and_broken_escapes() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz1"), "%zz1");
        assert_eq!(percent_decode("%C3%A9"), "é");
    }

    #[test]
    fn form_pairs_keeps_order_and_bare_keys() {
        let pairs = form_pairs("username=jason&passwd=x%26y&flag");
        assert_eq!(
            pairs,
            vec![
                ("username".to_owned(), "jason".to_owned()),
                ("passwd".to_owned(), "x&y".to_owned()),
                ("flag".to_owned(), String::new()),
            ]
        );
    }

    #[test]
    fn cookie_encoding_round_trips_through_decode() {
        let encoded = percent_encode_cookie("jo; s%e");
        assert_eq!(encoded, "jo%3B%20s%25e");
        assert_eq!(percent_decode(&encoded), "jo; s%e");
        assert_eq!(percent_encode_cookie("jason"), "jason");
    }
}
