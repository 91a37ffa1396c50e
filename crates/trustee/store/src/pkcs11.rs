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

/// Percent-decodes an attribute; the value may be a PIN, so it is not
/// repeated in the message.
fn percent_decode(s: &str) -> Result<String, KekError> {
    cocoon_types::percent::percent_decode(s).map_err(|why| bad(format!("an attribute has a {why}")))
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
        // The query may hold a PIN: its text is never repeated in a message.
        for (n, attr) in query.split('&').filter(|a| !a.is_empty()).enumerate() {
            let (k, v) = attr
                .split_once('=')
                .ok_or_else(|| bad(format!("query attribute {} is not name=value", n + 1)))?;
            match k {
                "module-path" => set(&mut module, k, v)?,
                "pin-value" => set(&mut pin, k, v)?,
                "pin-source" => set(&mut pin_file, k, v)?,
                _ => {
                    return Err(bad(format!(
                        "query attribute {} is not one of module-path, pin-value, pin-source",
                        n + 1
                    )));
                }
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
    key: Mutex<ObjectHandle>,
    label: String,
    /// Open for the life of the key: a token logs out, and forgets its
    /// handles, when its last session closes.
    _anchor: Mutex<Session>,
    /// For logging in again after the token dropped the login.
    pin: AuthPin,
    /// SoftHSM2 reports a failed GCM tag as CKR_GENERAL_ERROR.
    softhsm: bool,
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
fn key_template(label: &str, id: &[u8; 16]) -> Vec<Attribute> {
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
        Attribute::Derive(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ]
}

/// The secret keys labelled `label`.
fn find_keys(session: &Session, label: &str) -> Result<Vec<ObjectHandle>, KekError> {
    session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(|e| token_err("finding the key", e))
}

/// The key when `keys` holds exactly one.
fn only_key(keys: &[ObjectHandle], label: &str) -> Result<ObjectHandle, KekError> {
    match keys {
        [key] => Ok(*key),
        _ => Err(KekError::Token(format!(
            "the token holds {} secret keys labelled '{label}': keep one",
            keys.len()
        ))),
    }
}

/// Logs `session` in, which holds for every session of this process: a
/// session opened after a login needs none.
fn login(session: &Session, pin: &AuthPin, token: &str) -> Result<(), KekError> {
    match session.login(UserType::User, Some(pin)) {
        Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(e) => Err(token_err(&format!("logging in to token '{token}'"), e)),
    }
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
        let pin = uri.read_pin()?;
        login(&session, &pin, &uri.token)?;
        let keys = find_keys(&session, &uri.object)?;
        let key = if keys.is_empty() {
            let mut id = [0u8; 16];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
            let key = session
                .generate_key(&Mechanism::AesKeyGen, &key_template(&uri.object, &id))
                .map_err(|e| token_err("creating the key in the token", e))?;
            tracing::info!(token = %uri.token, object = %uri.object, "created a new key-encryption key in the token");
            Self::settle(&session, key, &uri.object)?
        } else {
            only_key(&keys, &uri.object)?
        };
        Self::check_contained(&session, key, &uri.object)?;
        let softhsm = ctx
            .get_library_info()
            .is_ok_and(|i| i.manufacturer_id().contains("SoftHSM"));
        let kek = Self {
            ctx,
            slot,
            pin,
            softhsm,
            key: Mutex::new(key),
            label: uri.object.clone(),
            _anchor: Mutex::new(session),
            idle: Mutex::new(vec![]),
        };
        // Some tokens choose the GCM IV themselves; whatever they do, what
        // is sealed must open.
        let (used, ct) = kek.encrypt(&[7u8; 12], b"probe", b"probe")?;
        if &*kek.decrypt(&used, b"probe", &ct)? != b"probe" {
            return Err(KekError::Token(
                "AES-GCM in the token does not open what it sealed".into(),
            ));
        }
        Ok(kek)
    }

    /// After creating `mine`: when replicas sharing the token created keys
    /// of the same label at once, all keep the one with the lowest id and
    /// the others destroy their own. Searched for a second, so a replica
    /// that created its key first still sees a later one made before it
    /// could be found; past that, a starting replica finds the key.
    fn settle(
        session: &Session,
        mine: ObjectHandle,
        label: &str,
    ) -> Result<ObjectHandle, KekError> {
        let (mut current, mut mine_alive) = (mine, true);
        for round in 0..5 {
            if round > 0 {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            let mut ids = vec![];
            for k in find_keys(session, label)? {
                let id = session
                    .get_attributes(k, &[AttributeType::Id])
                    .map_err(|e| token_err("reading a key id", e))?
                    .into_iter()
                    .find_map(|a| match a {
                        Attribute::Id(id) => Some(id),
                        _ => None,
                    })
                    .unwrap_or_default();
                ids.push((id, k));
            }
            ids.sort_by(|a, b| a.0.cmp(&b.0));
            let Some(&(_, winner)) = ids.first() else {
                return Err(KekError::Token("the key vanished from the token".into()));
            };
            if mine_alive && winner != mine {
                session
                    .destroy_object(mine)
                    .map_err(|e| token_err("removing a duplicate key", e))?;
                mine_alive = false;
            }
            current = winner;
        }
        Ok(current)
    }

    /// Refuses a key the token would reveal or export.
    fn check_contained(session: &Session, key: ObjectHandle, label: &str) -> Result<(), KekError> {
        let attrs = session
            .get_attributes(
                key,
                &[
                    AttributeType::KeyType,
                    AttributeType::ValueLen,
                    AttributeType::Sensitive,
                    AttributeType::AlwaysSensitive,
                    AttributeType::Extractable,
                    AttributeType::NeverExtractable,
                    AttributeType::Derive,
                ],
            )
            .map_err(|e| token_err("reading the key's attributes", e))?;
        let mut ok = [false; 7];
        for a in attrs {
            match a {
                Attribute::KeyType(t) => ok[0] = t == KeyType::AES,
                Attribute::ValueLen(n) => ok[1] = u64::from(n) == 32,
                Attribute::Sensitive(b) => ok[2] = b,
                Attribute::AlwaysSensitive(b) => ok[3] = b,
                Attribute::Extractable(b) => ok[4] = !b,
                Attribute::NeverExtractable(b) => ok[5] = b,
                Attribute::Derive(b) => ok[6] = !b,
                _ => {}
            }
        }
        if ok.contains(&false) {
            return Err(KekError::Token(format!(
                "the key '{label}' is not an AES-256 key that stays in the token (CKA_SENSITIVE \
                 and CKA_ALWAYS_SENSITIVE true, CKA_EXTRACTABLE false and CKA_NEVER_EXTRACTABLE \
                 true, CKA_DERIVE false): refusing it; delete it and let the trustee create one"
            )));
        }
        Ok(())
    }

    /// Runs `f` on an idle session, opening one (and logging in again if
    /// the token forgot the login) when none is idle. A session that fails
    /// is closed, and `f` tried once more on a fresh one: a token that was
    /// reset recovers without a restart.
    fn with_session<T>(&self, f: impl Fn(&Session) -> Result<T, KekError>) -> Result<T, KekError> {
        let popped = self.idle.lock().pop();
        let session = match popped {
            Some(s) => s,
            None => self.fresh_session(false)?,
        };
        match f(&session) {
            Err(KekError::Token(_)) => {}
            out => {
                self.idle.lock().push(session);
                return out;
            }
        }
        // The token may have been reset: every idle session is as dead as
        // this one, and its handles have changed (its labels have not).
        drop(session);
        self.idle.lock().clear();
        let session = self.fresh_session(true)?;
        let out = f(&session);
        if !matches!(out, Err(KekError::Token(_))) {
            self.idle.lock().push(session);
        }
        out
    }

    /// A new session, logged in; with `refind`, the key looked up again.
    fn fresh_session(&self, refind: bool) -> Result<Session, KekError> {
        let s = self
            .ctx
            .open_rw_session(self.slot)
            .map_err(|e| token_err("opening a session", e))?;
        login(&s, &self.pin, "of the key-encryption key")?;
        if refind {
            let key = only_key(&find_keys(&s, &self.label)?, &self.label)?;
            *self.key.lock() = key;
        }
        Ok(s)
    }

    /// AES-256-GCM encryption of `plain` with `aad`, inside the token: the
    /// IV used (the token may choose its own) and ciphertext with tag.
    pub fn encrypt(
        &self,
        iv: &[u8; 12],
        aad: &[u8],
        plain: &[u8],
    ) -> Result<([u8; 12], Vec<u8>), KekError> {
        self.with_session(|s| {
            let key = *self.key.lock();
            let mut used = *iv;
            let ct = {
                let params = GcmParams::new(&mut used, aad, 128.into())
                    .map_err(|e| token_err("GCM parameters", e))?;
                s.encrypt(&Mechanism::AesGcm(params), key, plain)
                    .map_err(|e| token_err("sealing in the token", e))?
            };
            Ok((used, ct))
        })
    }

    /// AES-256-GCM decryption inside the token: [`KekError::Open`] when
    /// the tag does not verify (another key, or tampering), a token error
    /// when the token cannot be used.
    pub fn decrypt(
        &self,
        iv: &[u8; 12],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KekError> {
        self.with_session(|s| {
            let key = *self.key.lock();
            let mut iv = *iv;
            let params = GcmParams::new(&mut iv, aad, 128.into())
                .map_err(|e| token_err("GCM parameters", e))?;
            match s.decrypt(&Mechanism::AesGcm(params), key, sealed) {
                Ok(v) => Ok(Zeroizing::new(v)),
                // A tag that does not verify: CKR_ENCRYPTED_DATA_INVALID by
                // the standard; SoftHSM2 says CKR_GENERAL_ERROR.
                Err(Error::Pkcs11(
                    RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange,
                    _,
                )) => Err(KekError::Open),
                Err(Error::Pkcs11(RvError::GeneralError, _)) if self.softhsm => Err(KekError::Open),
                Err(e) => Err(token_err("opening in the token", e)),
            }
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
