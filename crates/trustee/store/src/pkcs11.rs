//! A key-encryption key held in a PKCS#11 token (an HSM, a cloud KMS's
//! PKCS#11 library, SoftHSM2): AES-256-GCM runs inside the token, and the
//! key is created there as sensitive and not extractable, so its bytes
//! never reach this process.
//!
//! The key is named by a PKCS#11 URI (RFC 7512), e.g.
//! `pkcs11:token=cocoon;object=kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/secrets/pin`.

use crate::kek::KekError;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use zeroize::Zeroizing;

/// What a `pkcs11:` URI names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// The token's label (`token=`).
    pub token: String,
    /// The key's label (`object=`).
    pub object: String,
    /// The PKCS#11 library (`module-path=`).
    pub module: PathBuf,
    /// Where the user PIN comes from.
    pub pin: PinSource,
}

/// The user PIN: inline (`pin-value=`) or read from a file (`pin-source=`).
#[derive(Clone, PartialEq, Eq)]
pub enum PinSource {
    /// `pin-value=...` (visible in the process list: prefer a file).
    Value(Zeroizing<String>),
    /// `pin-source=file:PATH` or `pin-source=PATH`.
    File(PathBuf),
}

impl std::fmt::Debug for PinSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PinSource::Value(_) => f.write_str("Value(..)"),
            PinSource::File(p) => write!(f, "File({})", p.display()),
        }
    }
}

fn bad(why: impl std::fmt::Display) -> KekError {
    KekError::Token(format!(
        "{why}; expected pkcs11:token=LABEL;object=LABEL?module-path=LIB&pin-source=file:PATH"
    ))
}

fn percent_decode(s: &str) -> Result<String, KekError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad(format!("bad percent escape in '{s}'")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad("an attribute is not UTF-8"))
}

impl Pkcs11Uri {
    /// Parses the subset of RFC 7512 a KEK needs: `token` and `object` in
    /// the path, `module-path` and one of `pin-value` / `pin-source` in the
    /// query. Other standard attributes are refused rather than ignored.
    pub fn parse(uri: &str) -> Result<Self, KekError> {
        let rest = uri
            .strip_prefix("pkcs11:")
            .ok_or_else(|| bad("not a pkcs11: URI"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (mut token, mut object, mut module, mut pin) = (None, None, None, None);
        let set = |slot: &mut Option<String>, k: &str, v: &str| -> Result<(), KekError> {
            if slot.replace(percent_decode(v)?).is_some() {
                return Err(bad(format!("'{k}' given twice")));
            }
            Ok(())
        };
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (k, v) = attr
                .split_once('=')
                .ok_or_else(|| bad(format!("'{attr}' is not name=value")))?;
            match k {
                "token" => set(&mut token, k, v)?,
                "object" => set(&mut object, k, v)?,
                "type" if v == "secret-key" => {}
                _ => return Err(bad(format!("path attribute '{k}' is not supported"))),
            }
        }
        let mut pin_file = None;
        for attr in query.split('&').filter(|a| !a.is_empty()) {
            let (k, v) = attr
                .split_once('=')
                .ok_or_else(|| bad(format!("'{attr}' is not name=value")))?;
            match k {
                "module-path" => set(&mut module, k, v)?,
                "pin-value" => set(&mut pin, k, v)?,
                "pin-source" => set(&mut pin_file, k, v)?,
                _ => return Err(bad(format!("query attribute '{k}' is not supported"))),
            }
        }
        let pin = match (pin, pin_file) {
            (Some(v), None) => PinSource::Value(Zeroizing::new(v)),
            (None, Some(f)) => PinSource::File(PathBuf::from(
                f.strip_prefix("file:").map(str::to_string).unwrap_or(f),
            )),
            (None, None) => return Err(bad("no PIN: give pin-source=file:PATH or pin-value")),
            (Some(_), Some(_)) => return Err(bad("both pin-value and pin-source")),
        };
        Ok(Self {
            token: token.ok_or_else(|| bad("no token= label"))?,
            object: object.ok_or_else(|| bad("no object= label"))?,
            module: PathBuf::from(module.ok_or_else(|| bad("no module-path="))?),
            pin,
        })
    }

    fn read_pin(&self) -> Result<AuthPin, KekError> {
        match &self.pin {
            PinSource::Value(v) => Ok(AuthPin::from(v.as_str())),
            PinSource::File(p) => {
                let text =
                    Zeroizing::new(std::fs::read_to_string(p).map_err(|source| KekError::Io {
                        path: p.clone(),
                        source,
                    })?);
                Ok(AuthPin::from(text.trim_end_matches(['\r', '\n'])))
            }
        }
    }
}

/// One initialized context per library for the whole process: PKCS#11
/// allows one `C_Initialize`, and it is never finalized while a key may
/// still be in use.
fn context(module: &Path) -> Result<Pkcs11, KekError> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut contexts = CONTEXTS.get_or_init(Default::default).lock();
    if let Some(ctx) = contexts.get(module) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(module).map_err(|e| {
        KekError::Token(format!(
            "cannot load the PKCS#11 library {}: {e}",
            module.display()
        ))
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(token_err("C_Initialize", e)),
    }
    contexts.insert(module.to_path_buf(), ctx.clone());
    Ok(ctx)
}

fn token_err(what: &str, e: cryptoki::error::Error) -> KekError {
    KekError::Token(format!("{what}: {e}"))
}

/// The KEK inside a token.
pub struct TokenKek {
    ctx: Pkcs11,
    slot: Slot,
    key: ObjectHandle,
    /// Sessions not in use (a PKCS#11 session serves one thread at a time).
    idle: Mutex<Vec<Session>>,
}

impl std::fmt::Debug for TokenKek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKek{..}")
    }
}

/// The attributes of a key this KEK creates: AES-256 in the token,
/// sensitive, never extractable, for encryption and decryption only.
fn key_template(label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

impl TokenKek {
    /// Opens the token, logs in and finds the key by its label, creating
    /// it (sensitive, not extractable) when the token has none. A key
    /// that the token would let out is refused.
    pub fn open(uri: &Pkcs11Uri) -> Result<Self, KekError> {
        let ctx = context(&uri.module)?;
        let mut found = None;
        for slot in ctx
            .get_slots_with_initialized_token()
            .map_err(|e| token_err("listing slots", e))?
        {
            let info = ctx
                .get_token_info(slot)
                .map_err(|e| token_err("reading a token", e))?;
            if info.label().trim_end() == uri.token {
                found = Some(slot);
                break;
            }
        }
        let slot = found.ok_or_else(|| {
            KekError::Token(format!(
                "no initialized token labelled '{}' in {}",
                uri.token,
                uri.module.display()
            ))
        })?;
        let session = ctx
            .open_rw_session(slot)
            .map_err(|e| token_err("opening a session", e))?;
        match session.login(UserType::User, Some(&uri.read_pin()?)) {
            // A login holds for the whole process (another key of this token).
            Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => {
                return Err(token_err(
                    &format!("logging in to token '{}'", uri.token),
                    e,
                ));
            }
        }
        let search = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(uri.object.as_bytes().to_vec()),
        ];
        let keys = session
            .find_objects(&search)
            .map_err(|e| token_err("finding the key", e))?;
        let key = match keys.as_slice() {
            [] => {
                let key = session
                    .generate_key(&Mechanism::AesKeyGen, &key_template(&uri.object))
                    .map_err(|e| token_err("creating the key in the token", e))?;
                tracing::info!(token = %uri.token, object = %uri.object, "created a new key-encryption key in the token");
                key
            }
            [key] => *key,
            _ => {
                return Err(KekError::Token(format!(
                    "token '{}' holds {} secret keys labelled '{}': keep one",
                    uri.token,
                    keys.len(),
                    uri.object
                )));
            }
        };
        Self::check_contained(&session, key, &uri.object)?;
        Ok(Self {
            ctx,
            slot,
            key,
            idle: Mutex::new(vec![session]),
        })
    }

    /// Refuses a key the token would reveal or export.
    fn check_contained(session: &Session, key: ObjectHandle, label: &str) -> Result<(), KekError> {
        let attrs = session
            .get_attributes(
                key,
                &[
                    AttributeType::KeyType,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                ],
            )
            .map_err(|e| token_err("reading the key's attributes", e))?;
        let (mut aes, mut sensitive, mut extractable) = (false, false, true);
        for a in attrs {
            match a {
                Attribute::KeyType(t) => aes = t == KeyType::AES,
                Attribute::Sensitive(s) => sensitive = s,
                Attribute::Extractable(x) => extractable = x,
                _ => {}
            }
        }
        if !aes || !sensitive || extractable {
            return Err(KekError::Token(format!(
                "the key '{label}' is not an AES key that stays in the token (CKA_SENSITIVE true, \
                 CKA_EXTRACTABLE false): refusing it; delete it and let the trustee create one"
            )));
        }
        Ok(())
    }

    /// Runs `f` on an idle session (opening one when all are busy; the
    /// login covers every session of this process).
    fn with_session<T>(
        &self,
        f: impl FnOnce(&Session) -> Result<T, KekError>,
    ) -> Result<T, KekError> {
        let session = match self.idle.lock().pop() {
            Some(s) => s,
            None => self
                .ctx
                .open_rw_session(self.slot)
                .map_err(|e| token_err("opening a session", e))?,
        };
        let out = f(&session);
        self.idle.lock().push(session);
        out
    }

    /// AES-256-GCM encryption of `plain` with `aad`, inside the token:
    /// ciphertext and tag.
    pub fn encrypt(&self, iv: &[u8; 12], aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, KekError> {
        self.with_session(|s| {
            let mut iv = *iv;
            let params = GcmParams::new(&mut iv, aad, 128.into())
                .map_err(|e| token_err("GCM parameters", e))?;
            s.encrypt(&Mechanism::AesGcm(params), self.key, plain)
                .map_err(|e| token_err("sealing in the token", e))
        })
    }

    /// AES-256-GCM decryption inside the token; `None` when the tag does
    /// not verify (another key, or tampering).
    pub fn decrypt(
        &self,
        iv: &[u8; 12],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KekError> {
        self.with_session(|s| {
            let mut iv = *iv;
            let params = GcmParams::new(&mut iv, aad, 128.into())
                .map_err(|e| token_err("GCM parameters", e))?;
            s.decrypt(&Mechanism::AesGcm(params), self.key, sealed)
                .map(Zeroizing::new)
                .map_err(|_| KekError::Open)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        let u = Pkcs11Uri::parse(
            "pkcs11:token=my%20hsm;object=kek;type=secret-key?module-path=/usr/lib/x.so&pin-source=file:/run/pin",
        )
        .unwrap();
        assert_eq!(u.token, "my hsm");
        assert_eq!(u.object, "kek");
        assert_eq!(u.module, PathBuf::from("/usr/lib/x.so"));
        assert_eq!(u.pin, PinSource::File("/run/pin".into()));
        let u = Pkcs11Uri::parse("pkcs11:token=t;object=o?module-path=m&pin-value=1234").unwrap();
        assert!(matches!(u.pin, PinSource::Value(ref v) if v.as_str() == "1234"));
        assert!(!format!("{u:?}").contains("1234"), "the PIN is not printed");
        for (uri, says) in [
            ("file:/x", "not a pkcs11: URI"),
            ("pkcs11:object=o?module-path=m&pin-value=1", "no token="),
            ("pkcs11:token=t?module-path=m&pin-value=1", "no object="),
            ("pkcs11:token=t;object=o?pin-value=1", "no module-path="),
            ("pkcs11:token=t;object=o?module-path=m", "no PIN"),
            (
                "pkcs11:token=t;token=u;object=o?module-path=m&pin-value=1",
                "given twice",
            ),
            (
                "pkcs11:token=t;object=o;id=%01?module-path=m&pin-value=1",
                "'id' is not supported",
            ),
            (
                "pkcs11:token=t%zz;object=o?module-path=m&pin-value=1",
                "bad percent escape",
            ),
            (
                "pkcs11:token=t;object=o?module-path=m&pin-value=1&pin-source=f",
                "both",
            ),
            (
                "pkcs11:token;object=o?module-path=m&pin-value=1",
                "not name=value",
            ),
        ] {
            let e = Pkcs11Uri::parse(uri).unwrap_err().to_string();
            assert!(e.contains(says), "{uri}: {e}");
        }
    }
}
