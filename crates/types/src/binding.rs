//! The binding between a KBS session and TEE evidence: the hash of the
//! runtime data (nonce + TEE public key + additional evidence), computed over
//! its RFC 8785 canonical JSON form exactly as CoCo does.

use kbs_types::{HashAlgorithm, TeePubKey};
use serde_json::{Value, json};

/// Error while computing a binding.
#[derive(Debug, thiserror::Error)]
pub enum BindingError {
    /// The runtime data could not be put in canonical JSON form.
    #[error("cannot canonicalize runtime data: {0}")]
    Canonicalize(String),
}

/// The object whose digest the primary attester puts in its report data.
/// The `additional-evidence` member is always present, even when empty.
pub fn runtime_data_object(
    nonce: &str,
    tee_pubkey: &TeePubKey,
    additional_evidence: &str,
) -> Value {
    json!({
        "nonce": nonce,
        "tee-pubkey": tee_pubkey,
        "additional-evidence": additional_evidence,
    })
}

/// The object whose digest additional (device) attesters receive.
pub fn device_runtime_data_object(nonce: &str, tee_pubkey: &TeePubKey) -> Value {
    json!({ "nonce": nonce, "tee-pubkey": tee_pubkey })
}

/// `H(JCS(value))`.
pub fn digest_canonical(alg: HashAlgorithm, value: &Value) -> Result<Vec<u8>, BindingError> {
    Ok(alg.digest(&canonical(value)?))
}

/// `value` in RFC 8785 (JCS) form. Runtime data holds objects, strings and
/// the odd literal or integer, which are written here (a general
/// canonicalizer took longer than the session's hash and key checks
/// together); a value with any other number goes through one.
pub fn canonical(value: &Value) -> Result<Vec<u8>, BindingError> {
    let mut out = Vec::with_capacity(512);
    if write_canonical(value, &mut out) {
        return Ok(out);
    }
    serde_json_canonicalizer::to_vec(value).map_err(|e| BindingError::Canonicalize(e.to_string()))
}

/// Writes `v` in JCS form; false at a number this does not write (one a
/// double does not hold exactly, or with a fraction or exponent).
fn write_canonical(v: &Value, out: &mut Vec<u8>) -> bool {
    // Integers up to 2^53 are doubles exactly, printed as ECMAScript does.
    const EXACT: u64 = 1 << 53;
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) if u <= EXACT => out.extend_from_slice(u.to_string().as_bytes()),
            (None, Some(i)) if i.unsigned_abs() <= EXACT => {
                out.extend_from_slice(i.to_string().as_bytes())
            }
            _ => return false,
        },
        // JSON's escapes as JCS wants them: the two-letter forms, other
        // control characters as lower-case \u00xx, the rest as UTF-8.
        Value::String(s) => return serde_json::to_writer(&mut *out, s).is_ok(),
        Value::Array(a) => {
            out.push(b'[');
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if !write_canonical(item, out) {
                    return false;
                }
            }
            out.push(b']');
        }
        Value::Object(m) => {
            // Members sorted by their names' UTF-16 code units.
            let mut members: Vec<_> = m.iter().collect();
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push(b'{');
            for (i, (k, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if serde_json::to_writer(&mut *out, k).is_err() {
                    return false;
                }
                out.push(b':');
                if !write_canonical(item, out) {
                    return false;
                }
            }
            out.push(b'}');
        }
    }
    true
}

/// The report data a primary attester must carry for this session.
pub fn primary_report_data(
    alg: HashAlgorithm,
    nonce: &str,
    tee_pubkey: &TeePubKey,
    additional_evidence: &str,
) -> Result<Vec<u8>, BindingError> {
    digest_canonical(
        alg,
        &runtime_data_object(nonce, tee_pubkey, additional_evidence),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn matches_the_published_test_vector() {
        let key = TeePubKey::EC {
            crv: "P-256".into(),
            alg: "ECDH-ES+A256KW".into(),
            x: "xx".into(),
            y: "yy".into(),
        };
        let obj = runtime_data_object("AAAA", &key, "");
        assert_eq!(
            serde_json_canonicalizer::to_string(&obj).unwrap(),
            r#"{"additional-evidence":"","nonce":"AAAA","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"xx","y":"yy"}}"#
        );
        let d = primary_report_data(HashAlgorithm::Sha384, "AAAA", &key, "").unwrap();
        assert_eq!(
            hex::encode(&d),
            "50afebdd550d27873e4daa5f182e1fcac89a931b57c976e7ba3956b8fb34603d2fb6293917669bab46e73bdfb3797d52"
        );
        assert_eq!(
            base64::engine::general_purpose::STANDARD.encode(&d),
            "UK/r3VUNJ4c+TapfGC4fysiakxtXyXbnujlWuPs0YD0vtik5F2abq0bnO9+zeX1S"
        );
    }

    /// Our writer against the general canonicalizer, on values shaped
    /// like runtime data and on the awkward corners (names that sort
    /// differently in UTF-8 and UTF-16, control characters, integer
    /// bounds, numbers left to the canonicalizer).
    #[test]
    fn canonical_form_is_the_canonicalizers() {
        let names = [
            "",
            "a",
            "A",
            "b",
            "aa",
            "nonce",
            "tee-pubkey",
            "é",
            "\u{e000}",
            "\u{ffff}",
            "\u{1f600}",
            "\u{10000}",
            "x\u{7f}",
            "\n",
            "\"",
        ];
        let strings = [
            "",
            "plain",
            "tab\there",
            "\u{0}\u{1}\u{1f}",
            "quote\"back\\slash",
            "\u{2028}\u{2029}",
            "é😀",
            "\u{8}\u{c}\r\n",
            "/</script>",
            "\u{7f}",
        ];
        let numbers = [
            json!(0),
            json!(-1),
            json!(1u64 << 53),
            json!(-(1i64 << 53)),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1.5),
            json!(1e21),
            json!(-0.0),
            json!(0.1),
        ];
        // A small deterministic generator: varied shapes, reproducible.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        fn value(
            depth: usize,
            next: &mut dyn FnMut(usize) -> usize,
            names: &[&str],
            strings: &[&str],
            numbers: &[Value],
        ) -> Value {
            match if depth == 0 { next(4) } else { next(6) } {
                0 => Value::String(strings[next(strings.len())].to_string()),
                1 => numbers[next(numbers.len())].clone(),
                2 => [Value::Null, Value::Bool(true), Value::Bool(false)][next(3)].clone(),
                3 => Value::String(format!(
                    "{}{}",
                    strings[next(strings.len())],
                    names[next(names.len())]
                )),
                4 => Value::Array(
                    (0..next(4))
                        .map(|_| value(depth - 1, next, names, strings, numbers))
                        .collect(),
                ),
                _ => Value::Object(
                    (0..next(6))
                        .map(|_| {
                            (
                                names[next(names.len())].to_string(),
                                value(depth - 1, next, names, strings, numbers),
                            )
                        })
                        .collect(),
                ),
            }
        }
        let mut written = 0;
        for _ in 0..3000 {
            let v = value(3, &mut next, &names, &strings, &numbers);
            let mut mine = Vec::new();
            if write_canonical(&v, &mut mine) {
                written += 1;
            }
            let theirs = serde_json_canonicalizer::to_vec(&v).unwrap();
            assert_eq!(canonical(&v).unwrap(), theirs, "{v}");
        }
        // Most values are written here, and some were not.
        assert!(written > 1000 && written < 3000, "{written}");
    }

    #[test]
    fn a_different_nonce_changes_the_binding() {
        let key = TeePubKey::EC {
            crv: "P-256".into(),
            alg: "ECDH-ES+A256KW".into(),
            x: "xx".into(),
            y: "yy".into(),
        };
        let a = primary_report_data(HashAlgorithm::Sha384, "AAAA", &key, "").unwrap();
        let b = primary_report_data(HashAlgorithm::Sha384, "AAAB", &key, "").unwrap();
        assert_ne!(a, b);
    }
}
