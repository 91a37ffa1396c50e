//! Percent-decoding, strict: every `%` is followed by two hex digits and
//! the result is UTF-8 (PCCS headers, PKCS#11 URIs).

/// The text `s` stands for, or what is wrong with it.
pub fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = s
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("bad percent escape")?;
            out.push(h);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent-decoded text is not UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_escapes_are_two_hex_digits() {
        assert_eq!(percent_decode("a%2Fb%20c").unwrap(), "a/b c");
        for bad in ["%+f", "%-1", "%g0", "%2", "%"] {
            assert!(percent_decode(bad).is_err(), "{bad}");
        }
    }
}
