//! The Arm CCA attestation token: a CBOR collection (tag 399) of two
//! COSE_Sign1 messages. The platform token is signed by the platform's
//! attestation key (CPAK); the realm token by the realm's attestation key
//! (RAK), whose public key the realm token carries and whose hash the
//! platform token's challenge holds. Claims are read into typed structs;
//! unknown claims are ignored, and a known claim of the wrong type is an
//! error.

use ciborium::value::{Integer, Value};

/// Why a token did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed CCA token: {0}")]
pub struct TokenError(pub String);

fn err(s: impl Into<String>) -> TokenError {
    TokenError(s.into())
}

/// Collection tag.
const CCA_TOKEN_TAG: u64 = 399;
/// COSE_Sign1 tag.
const COSE_SIGN1_TAG: u64 = 18;
/// Collection key of the platform token.
const PLATFORM_KEY: i128 = 44234;
/// Collection key of the realm token.
const REALM_KEY: i128 = 44241;
/// Largest token accepted.
pub const MAX_TOKEN: usize = 64 * 1024;

/// A COSE_Sign1 message.
#[derive(Debug, Clone)]
pub struct CoseSign1 {
    /// The protected header, as signed.
    pub protected: Vec<u8>,
    /// The COSE algorithm (-7 ES256, -35 ES384, -36 ES512).
    pub alg: i64,
    /// The payload (the claims, CBOR).
    pub payload: Vec<u8>,
    /// The signature (r‖s).
    pub signature: Vec<u8>,
}

impl CoseSign1 {
    fn parse(b: &[u8], what: &str) -> Result<Self, TokenError> {
        let v = decode(b, what)?;
        let v = match v {
            Value::Tag(COSE_SIGN1_TAG, inner) => *inner,
            Value::Tag(t, _) => {
                return Err(err(format!("{what}: tag {t}, expected COSE_Sign1 (18)")));
            }
            v => v,
        };
        let Value::Array(parts) = v else {
            return Err(err(format!("{what} is not a COSE_Sign1 array")));
        };
        let [protected, unprotected, payload, signature] =
            <[Value; 4]>::try_from(parts).map_err(|p| {
                err(format!(
                    "{what}: COSE_Sign1 with {} parts, expected 4",
                    p.len()
                ))
            })?;
        let protected = bytes(protected, &format!("{what} protected header"))?;
        if !matches!(unprotected, Value::Map(_)) {
            return Err(err(format!("{what}: unprotected header is not a map")));
        }
        let header = map(
            decode(&protected, what)?,
            &format!("{what} protected header"),
        )?;
        let alg = header
            .iter()
            .find(|(k, _)| int(k) == Some(1))
            .and_then(|(_, v)| int(v))
            .and_then(|a| i64::try_from(a).ok())
            .ok_or_else(|| err(format!("{what}: protected header without an algorithm")))?;
        Ok(Self {
            protected,
            alg,
            payload: bytes(payload, &format!("{what} payload"))?,
            signature: bytes(signature, &format!("{what} signature"))?,
        })
    }

    /// The bytes the signature covers: the COSE Sig_structure
    /// `["Signature1", protected, h'', payload]`.
    pub fn to_be_signed(&self) -> Vec<u8> {
        let v = Value::Array(vec![
            Value::Text("Signature1".into()),
            Value::Bytes(self.protected.clone()),
            Value::Bytes(Vec::new()),
            Value::Bytes(self.payload.clone()),
        ]);
        let mut out = Vec::with_capacity(self.payload.len() + self.protected.len() + 32);
        // Writing to a Vec cannot fail.
        let _ = ciborium::into_writer(&v, &mut out);
        out
    }

    /// Verifies the signature with `public_key`: an uncompressed SEC1 point
    /// of the curve the algorithm names.
    pub fn verify(&self, public_key: &[u8]) -> Result<(), String> {
        self.verify_any([public_key])
    }

    /// Verifies the signature with any of `public_keys` (the signed
    /// structure is built once).
    pub fn verify_any<'a>(
        &self,
        public_keys: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), String> {
        use ring::signature::{
            ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, UnparsedPublicKey,
        };
        let alg = match self.alg {
            -7 => &ECDSA_P256_SHA256_FIXED,
            -35 => &ECDSA_P384_SHA384_FIXED,
            a => {
                return Err(format!(
                    "COSE algorithm {a} is not supported (ES256, ES384)"
                ));
            }
        };
        let signed = self.to_be_signed();
        public_keys
            .into_iter()
            .any(|k| {
                UnparsedPublicKey::new(alg, k)
                    .verify(&signed, &self.signature)
                    .is_ok()
            })
            .then_some(())
            .ok_or_else(|| "signature does not verify".into())
    }
}

/// A platform software component.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SwComponent {
    /// Component type (`BL`, `RSE_BL1_2`, …).
    pub measurement_type: Option<String>,
    /// Measurement.
    pub measurement_value: Vec<u8>,
    /// Version.
    pub version: Option<String>,
    /// Signer id.
    pub signer_id: Vec<u8>,
    /// Hash algorithm of the measurement.
    pub hash_algo_id: Option<String>,
}

/// Platform claims.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PlatformClaims {
    /// Profile (`http://arm.com/CCA-SSD/1.0.0`).
    pub profile: String,
    /// Challenge: the hash of the RAK public key.
    pub challenge: Vec<u8>,
    /// Implementation id.
    pub implementation_id: Vec<u8>,
    /// Instance id (UEID).
    pub instance_id: Vec<u8>,
    /// Configuration.
    pub config: Vec<u8>,
    /// Security lifecycle.
    pub lifecycle: u64,
    /// Software components.
    pub sw_components: Vec<SwComponent>,
    /// Verification service indicator.
    pub verification_service: Option<String>,
    /// Hash algorithm of the challenge.
    pub hash_algo_id: String,
}

/// Realm claims.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RealmClaims {
    /// Challenge (the session's report data).
    pub challenge: Vec<u8>,
    /// Realm personalization value (CoCo: the initdata digest).
    pub personalization_value: Vec<u8>,
    /// Realm initial measurement (RIM).
    pub initial_measurement: Vec<u8>,
    /// Realm extensible measurements (REM0..3).
    pub extensible_measurements: Vec<Vec<u8>>,
    /// Measurement hash algorithm.
    pub hash_algo_id: String,
    /// RAK public key (uncompressed P-384 point).
    pub public_key: Vec<u8>,
    /// Hash algorithm named for the RAK public key.
    pub public_key_hash_algo_id: String,
    /// Realm profile, when present.
    pub profile: Option<String>,
}

/// A parsed token.
#[derive(Debug, Clone)]
pub struct CcaToken {
    /// The platform COSE_Sign1.
    pub platform_cose: CoseSign1,
    /// The realm COSE_Sign1.
    pub realm_cose: CoseSign1,
    /// Platform claims.
    pub platform: PlatformClaims,
    /// Realm claims.
    pub realm: RealmClaims,
}

fn decode(b: &[u8], what: &str) -> Result<Value, TokenError> {
    let mut r = b;
    let v: Value =
        ciborium::from_reader(&mut r).map_err(|e| err(format!("{what} is not CBOR: {e}")))?;
    if !r.is_empty() {
        return Err(err(format!("{what}: {} trailing bytes", r.len())));
    }
    Ok(v)
}

fn int(v: &Value) -> Option<i128> {
    match v {
        Value::Integer(i) => Some(i128::from(*i)),
        _ => None,
    }
}

fn bytes(v: Value, what: &str) -> Result<Vec<u8>, TokenError> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => Err(err(format!("{what} is not a byte string"))),
    }
}

fn text(v: Value, what: &str) -> Result<String, TokenError> {
    match v {
        Value::Text(t) => Ok(t),
        _ => Err(err(format!("{what} is not a text string"))),
    }
}

fn uint(v: Value, what: &str) -> Result<u64, TokenError> {
    match v {
        Value::Integer(i) => u64::try_from(i).map_err(|_| err(format!("{what} is negative"))),
        _ => Err(err(format!("{what} is not an integer"))),
    }
}

fn map(v: Value, what: &str) -> Result<Vec<(Value, Value)>, TokenError> {
    match v {
        Value::Map(m) => Ok(m),
        _ => Err(err(format!("{what} is not a map"))),
    }
}

/// The map's entries by integer key; a repeated key is an error.
fn by_key(m: Vec<(Value, Value)>, what: &str) -> Result<Vec<(i128, Value)>, TokenError> {
    let mut out: Vec<(i128, Value)> = Vec::with_capacity(m.len());
    for (k, v) in m {
        let Some(k) = int(&k) else { continue };
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(err(format!("{what}: claim {k} appears twice")));
        }
        out.push((k, v));
    }
    Ok(out)
}

fn required<T>(v: Option<T>, what: &str) -> Result<T, TokenError> {
    v.ok_or_else(|| err(format!("missing claim {what}")))
}

impl PlatformClaims {
    fn parse(payload: &[u8]) -> Result<Self, TokenError> {
        let m = by_key(
            map(decode(payload, "platform claims")?, "platform claims")?,
            "platform claims",
        )?;
        let (mut profile, mut challenge, mut implementation_id, mut instance_id) =
            (None, None, None, None);
        let (mut config, mut lifecycle, mut sw, mut service, mut hash) =
            (None, None, None, None, None);
        for (k, v) in m {
            match k {
                265 => profile = Some(text(v, "cca-platform-profile")?),
                10 => challenge = Some(bytes(v, "cca-platform-challenge")?),
                2396 => implementation_id = Some(bytes(v, "cca-platform-implementation-id")?),
                256 => instance_id = Some(bytes(v, "cca-platform-instance-id")?),
                2401 => config = Some(bytes(v, "cca-platform-config")?),
                2395 => lifecycle = Some(uint(v, "cca-platform-lifecycle")?),
                2399 => {
                    let Value::Array(items) = v else {
                        return Err(err("cca-platform-sw-components is not an array"));
                    };
                    let mut out = Vec::with_capacity(items.len());
                    for item in items {
                        out.push(SwComponent::parse(item)?);
                    }
                    sw = Some(out);
                }
                2400 => service = Some(text(v, "cca-platform-service-indicator")?),
                2402 => hash = Some(text(v, "cca-platform-hash-algo-id")?),
                _ => {}
            }
        }
        Ok(Self {
            profile: required(profile, "cca-platform-profile")?,
            challenge: required(challenge, "cca-platform-challenge")?,
            implementation_id: required(implementation_id, "cca-platform-implementation-id")?,
            instance_id: required(instance_id, "cca-platform-instance-id")?,
            config: config.unwrap_or_default(),
            lifecycle: required(lifecycle, "cca-platform-lifecycle")?,
            sw_components: required(sw, "cca-platform-sw-components")?,
            verification_service: service,
            hash_algo_id: required(hash, "cca-platform-hash-algo-id")?,
        })
    }
}

impl SwComponent {
    fn parse(v: Value) -> Result<Self, TokenError> {
        let what = "a software component";
        let mut c = SwComponent::default();
        let mut value = None;
        for (k, v) in by_key(map(v, what)?, what)? {
            match k {
                1 => c.measurement_type = Some(text(v, "measurement-type")?),
                2 => value = Some(bytes(v, "measurement-value")?),
                4 => c.version = Some(text(v, "version")?),
                5 => c.signer_id = bytes(v, "signer-id")?,
                6 => c.hash_algo_id = Some(text(v, "hash-algo-id")?),
                _ => {}
            }
        }
        c.measurement_value = required(value, "measurement-value")?;
        Ok(c)
    }
}

impl RealmClaims {
    fn parse(payload: &[u8]) -> Result<Self, TokenError> {
        let m = by_key(
            map(decode(payload, "realm claims")?, "realm claims")?,
            "realm claims",
        )?;
        let mut r = RealmClaims::default();
        let (mut challenge, mut rpv, mut rim, mut rem, mut hash, mut key, mut key_hash) =
            (None, None, None, None, None, None, None);
        for (k, v) in m {
            match k {
                10 => challenge = Some(bytes(v, "cca-realm-challenge")?),
                44235 => rpv = Some(bytes(v, "cca-realm-personalization-value")?),
                44238 => rim = Some(bytes(v, "cca-realm-initial-measurement")?),
                44239 => {
                    let Value::Array(items) = v else {
                        return Err(err("cca-realm-extensible-measurements is not an array"));
                    };
                    let mut out = Vec::with_capacity(items.len());
                    for item in items {
                        out.push(bytes(item, "a realm extensible measurement")?);
                    }
                    rem = Some(out);
                }
                44240 => hash = Some(text(v, "cca-realm-hash-algo-id")?),
                44237 => key = Some(bytes(v, "cca-realm-public-key")?),
                44236 => key_hash = Some(text(v, "cca-realm-public-key-hash-algo-id")?),
                265 | 44233 => r.profile = Some(text(v, "cca-realm-profile")?),
                _ => {}
            }
        }
        r.challenge = required(challenge, "cca-realm-challenge")?;
        r.personalization_value = required(rpv, "cca-realm-personalization-value")?;
        r.initial_measurement = required(rim, "cca-realm-initial-measurement")?;
        r.extensible_measurements = required(rem, "cca-realm-extensible-measurements")?;
        r.hash_algo_id = required(hash, "cca-realm-hash-algo-id")?;
        r.public_key = required(key, "cca-realm-public-key")?;
        r.public_key_hash_algo_id = required(key_hash, "cca-realm-public-key-hash-algo-id")?;
        if r.challenge.len() != 64 {
            return Err(err(format!(
                "cca-realm-challenge of {} bytes, expected 64",
                r.challenge.len()
            )));
        }
        if r.extensible_measurements.len() != 4 {
            return Err(err(format!(
                "{} realm extensible measurements, expected 4",
                r.extensible_measurements.len()
            )));
        }
        Ok(r)
    }
}

impl CcaToken {
    /// Parses a CCA token (tagged or untagged collection).
    pub fn parse(b: &[u8]) -> Result<Self, TokenError> {
        if b.len() > MAX_TOKEN {
            return Err(err(format!("{} bytes, at most {MAX_TOKEN}", b.len())));
        }
        let v = match decode(b, "the token")? {
            Value::Tag(CCA_TOKEN_TAG, inner) => *inner,
            Value::Tag(t, _) => {
                return Err(err(format!("tag {t}, expected the CCA token tag 399")));
            }
            v => v,
        };
        let (mut platform, mut realm) = (None, None);
        for (k, v) in by_key(map(v, "the token collection")?, "the token collection")? {
            match k {
                PLATFORM_KEY => platform = Some(bytes(v, "the platform token")?),
                REALM_KEY => realm = Some(bytes(v, "the realm token")?),
                _ => {}
            }
        }
        let platform_cose = CoseSign1::parse(
            &platform.ok_or_else(|| err("no platform token (44234)"))?,
            "platform token",
        )?;
        let realm_cose = CoseSign1::parse(
            &realm.ok_or_else(|| err("no realm token (44241)"))?,
            "realm token",
        )?;
        Ok(Self {
            platform: PlatformClaims::parse(&platform_cose.payload)?,
            realm: RealmClaims::parse(&realm_cose.payload)?,
            platform_cose,
            realm_cose,
        })
    }
}

/// `Integer` from an `i64`, for building tokens.
pub fn integer(i: i64) -> Value {
    Value::Integer(Integer::from(i))
}
