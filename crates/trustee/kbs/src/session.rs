//! Stateless sessions: everything a session needs travels in the
//! `kbs-session-id` cookie, sealed with AES-256-GCM under a session key
//! every replica shares (kept in the store, sealed with the KEK). Any
//! replica can continue any session; a forged, altered or foreign cookie
//! does not open.
//!
//! Session keys have ids and can be rotated: a cookie names the key that
//! sealed it (`2.<key id>.<sealed>`), new sessions use the current key, and
//! a retired key keeps opening the sessions it sealed until they expire
//! (it is deleted at a later rotation, once no session it sealed can be
//! alive). A rotation on one replica reaches the others within
//! [`RECHECK`], or at once when they meet a cookie under the new key.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use cocoon_store::{Kek, Store, StoreError, ns};
use parking_lot::RwLock;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Store key (in [`ns::KEYS`]) naming the current session key.
const CURRENT: &str = "session-current";
/// Prefix of session-key records in [`ns::KEYS`].
const KEY_PREFIX: &str = "session/";
/// Cookie format tag.
const FORMAT: &str = "2";
/// How often a replica re-reads which key is current.
pub const RECHECK: Duration = Duration::from_secs(1);
/// A retired key is kept at least this long after its retirement, whatever
/// the session lifetime (replicas may be configured differently).
const MIN_RETENTION_SECS: i64 = 3600;

/// What an attested session carries.
#[derive(Serialize, Deserialize, Clone)]
pub struct Attested {
    /// The EAR token issued for this session.
    pub token: String,
    /// Token expiry (Unix seconds).
    pub token_exp: i64,
}

/// Session state.
#[derive(Serialize, Deserialize)]
pub struct Session {
    /// The challenge nonce.
    pub nonce: String,
    /// TEE name.
    pub tee: String,
    /// Expiry (Unix seconds); the cookie carries the same time.
    pub exp: i64,
    /// Set once attestation succeeded.
    pub attested: Option<Attested>,
}

/// A session as it is sealed. The token's payload travels as its JSON text
/// (a third shorter than its base64url) and is base64url-encoded again on
/// open, which gives back the very bytes that were signed.
#[derive(Serialize, Deserialize)]
struct WireSession {
    nonce: String,
    tee: String,
    exp: i64,
    attested: Option<WireAttested>,
}

#[derive(Serialize, Deserialize)]
struct WireAttested {
    /// The token's header, base64url as signed.
    head: String,
    /// The token's payload: its JSON text, or base64url when not UTF-8.
    payload: String,
    /// Whether `payload` is still base64url.
    #[serde(default)]
    encoded: bool,
    /// The signature, base64url.
    sig: String,
    token_exp: i64,
}

impl WireSession {
    fn from_session(s: &Session) -> Self {
        let attested = s.attested.as_ref().map(|a| {
            let mut parts = a.token.splitn(3, '.');
            let (head, payload, sig) = (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            );
            let text = B64URL
                .decode(payload)
                .ok()
                .and_then(|b| String::from_utf8(b).ok());
            WireAttested {
                head: head.to_string(),
                encoded: text.is_none(),
                payload: text.unwrap_or_else(|| payload.to_string()),
                sig: sig.to_string(),
                token_exp: a.token_exp,
            }
        });
        Self {
            nonce: s.nonce.clone(),
            tee: s.tee.clone(),
            exp: s.exp,
            attested,
        }
    }

    fn into_session(self) -> Session {
        Session {
            nonce: self.nonce,
            tee: self.tee,
            exp: self.exp,
            attested: self.attested.map(|a| {
                let payload = if a.encoded {
                    a.payload
                } else {
                    B64URL.encode(a.payload.as_bytes())
                };
                Attested {
                    token: format!("{}.{payload}.{}", a.head, a.sig),
                    token_exp: a.token_exp,
                }
            }),
        }
    }
}

/// The sealed plaintext: the session's JSON.
fn encode_session(s: &Session) -> Vec<u8> {
    serde_json::to_vec(&WireSession::from_session(s)).unwrap_or_default()
}

fn decode_session(plain: &[u8]) -> Option<Session> {
    serde_json::from_slice::<WireSession>(plain)
        .ok()
        .map(WireSession::into_session)
}

/// A session key as stored: sealed with the KEK.
#[derive(Serialize, Deserialize)]
struct KeyRecord {
    /// The 32-byte key sealed with the KEK (AAD: its store key), base64.
    sealed: String,
    /// Unix seconds.
    created: i64,
    /// When it stopped sealing new sessions, Unix seconds.
    #[serde(default)]
    retired: Option<i64>,
}

/// One session key, as the admin sees it (never the key itself).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionKeyInfo {
    /// Key id (8 hex digits), as cookies name it.
    pub id: String,
    /// Unix seconds.
    pub created: i64,
    /// When it was retired, Unix seconds; `None` for the current key.
    pub retired: Option<i64>,
    /// Whether new sessions are sealed with it.
    pub current: bool,
}

struct Keyring {
    current: String,
    ciphers: HashMap<String, Aes256Gcm>,
    /// When it was last read from the store.
    checked: Instant,
    /// When a cookie under an unknown key last forced a re-read.
    forced: Option<Instant>,
}

/// Seals and opens session cookies.
pub struct SessionSealer {
    store: Arc<dyn Store>,
    kek: Arc<Kek>,
    ring: RwLock<Keyring>,
    /// Held while the keyring is read from the store (and its keys opened
    /// with the KEK, maybe in an HSM), so that this happens once at a time
    /// and without holding `ring`: sealing and opening go on meanwhile.
    loading: parking_lot::Mutex<()>,
    /// Sessions live at most this long (seconds): how long a retired key
    /// must still open cookies.
    max_session_secs: i64,
}

/// Why a cookie did not open.
#[derive(Debug, PartialEq, Eq)]
pub enum OpenError {
    /// Not ours, or altered.
    Invalid,
    /// Ours, but past its expiry.
    Expired,
}

fn store_key(id: &str) -> String {
    format!("{KEY_PREFIX}{id}")
}

fn new_key_id() -> String {
    let mut id = [0u8; 4];
    OsRng.fill_bytes(&mut id);
    hex::encode(id)
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The cookie's associated data: the format and the key id, so a sealed
/// session cannot be presented under another key's name.
fn aad(id: &str) -> Vec<u8> {
    format!("cocoon-kbs-session-v{FORMAT}:{id}").into_bytes()
}

impl SessionSealer {
    /// Loads the session keys, creating the first one (once for all
    /// replicas) if there is none. Sessions last at most
    /// `max_session_secs`.
    pub fn load_or_create(
        store: &Arc<dyn Store>,
        kek: Arc<Kek>,
        max_session_secs: i64,
    ) -> Result<Self, StoreError> {
        if store.get(ns::KEYS, CURRENT)?.is_none() {
            let id = new_key_id();
            Self::create_key(store, &kek, &id)?;
            store.put_if_absent(ns::KEYS, CURRENT, id.as_bytes())?;
        }
        let ring = Self::load(store, &kek)?;
        Ok(Self {
            store: store.clone(),
            kek,
            ring: RwLock::new(ring),
            loading: parking_lot::Mutex::new(()),
            max_session_secs,
        })
    }

    fn create_key(store: &Arc<dyn Store>, kek: &Kek, id: &str) -> Result<(), StoreError> {
        let mut k = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(k.as_mut());
        let record = KeyRecord {
            sealed: B64.encode(
                kek.seal(ns::KEYS, &store_key(id), k.as_ref())
                    .map_err(|e| StoreError::Backend(format!("cannot seal a session key: {e}")))?,
            ),
            created: unix_now(),
            retired: None,
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| StoreError::Backend(e.to_string()))?;
        if !store.put_if_absent(ns::KEYS, &store_key(id), &bytes)? {
            return Err(StoreError::Backend(format!(
                "session key id {id} is taken; rotate again"
            )));
        }
        Ok(())
    }

    fn records(store: &Arc<dyn Store>) -> Result<Vec<(String, KeyRecord)>, StoreError> {
        let mut out = Vec::new();
        for k in store.list(ns::KEYS)? {
            let Some(id) = k.strip_prefix(KEY_PREFIX) else {
                continue;
            };
            let Some(bytes) = store.get(ns::KEYS, &k)? else {
                continue;
            };
            let record: KeyRecord = serde_json::from_slice(&bytes)
                .map_err(|_| StoreError::Unseal(format!("{}/{k}", ns::KEYS)))?;
            out.push((id.to_string(), record));
        }
        Ok(out)
    }

    fn load(store: &Arc<dyn Store>, kek: &Kek) -> Result<Keyring, StoreError> {
        let current = store
            .get(ns::KEYS, CURRENT)?
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| StoreError::Backend("no current session key".into()))?;
        let mut ciphers = HashMap::new();
        for (id, record) in Self::records(store)? {
            let unseal = || StoreError::Unseal(format!("{}/{}", ns::KEYS, store_key(&id)));
            let sealed = B64.decode(&record.sealed).map_err(|_| unseal())?;
            let key = kek
                .open(ns::KEYS, &store_key(&id), &sealed)
                .map_err(|_| unseal())?;
            let cipher = Aes256Gcm::new_from_slice(&key).map_err(|_| unseal())?;
            ciphers.insert(id, cipher);
        }
        if !ciphers.contains_key(&current) {
            return Err(StoreError::Backend(format!(
                "the current session key {current} is not in the store"
            )));
        }
        Ok(Keyring {
            current,
            ciphers,
            checked: Instant::now(),
            forced: None,
        })
    }

    /// Re-reads the keyring when it is older than [`RECHECK`] (or `force`).
    /// A store failure keeps the keys already known.
    fn refresh(&self, force: bool) {
        // Forced (a cookie names a key not known here) at most ten times per
        // RECHECK, so cookies naming made-up keys cannot drive the store.
        let due = |ring: &Keyring| {
            if force {
                ring.forced.is_none_or(|t| t.elapsed() >= RECHECK / 10)
            } else {
                ring.checked.elapsed() >= RECHECK
            }
        };
        if !due(&self.ring.read()) {
            return;
        }
        // A forced re-read waits for one in progress (its cookie needs the
        // keys it brings); a periodic one leaves it to whoever is loading,
        // and the others go on with the keys known while it loads.
        let _loading = if force {
            self.loading.lock()
        } else {
            match self.loading.try_lock() {
                Some(g) => g,
                None => return,
            }
        };
        {
            let mut ring = self.ring.write();
            if !due(&ring) {
                return;
            }
            if force {
                ring.forced = Some(Instant::now());
            } else {
                ring.checked = Instant::now();
            }
        }
        let loaded = Self::load(&self.store, &self.kek);
        let mut ring = self.ring.write();
        match loaded {
            Ok(mut new) => {
                new.forced = ring.forced;
                *ring = new;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot re-read the session keys; keeping the ones known");
            }
        }
    }

    /// Seals a session into a cookie value, under the current key.
    pub fn seal(&self, s: &Session) -> String {
        self.refresh(false);
        let ring = self.ring.read();
        let id = ring.current.clone();
        let Some(cipher) = ring.ciphers.get(&id) else {
            return String::new();
        };
        let plain = encode_session(s);
        let mut nonce = [0u8; 12];
        OsRng.fill_bytes(&mut nonce);
        let aad = aad(&id);
        let ct = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        let mut raw = Vec::with_capacity(12 + ct.len());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&ct);
        format!("{FORMAT}.{id}.{}", B64URL.encode(raw))
    }

    /// Whether the key a cookie names (`2.<id>.…`) still opens cookies here
    /// (re-reading the keyring as [`open`](Self::open) does).
    pub fn cookie_key_usable(&self, cookie: &str) -> bool {
        let Some(id) = cookie
            .strip_prefix(FORMAT)
            .and_then(|c| c.strip_prefix('.'))
            .and_then(|c| c.get(..8))
        else {
            return false;
        };
        self.refresh(false);
        self.ring.read().ciphers.contains_key(id)
    }

    /// Opens a cookie value, checking its expiry against `now`.
    pub fn open(&self, cookie: &str, now: i64) -> Result<Session, OpenError> {
        let mut parts = cookie.splitn(3, '.');
        let (Some(FORMAT), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(OpenError::Invalid);
        };
        if id.len() != 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(OpenError::Invalid);
        }
        let raw = B64URL.decode(body).map_err(|_| OpenError::Invalid)?;
        if raw.len() < 12 + 16 {
            return Err(OpenError::Invalid);
        }
        // Within RECHECK of a rotation with --drop-old on any replica, the
        // dropped keys stop opening cookies here too.
        self.refresh(false);
        if !self.ring.read().ciphers.contains_key(id) {
            // Perhaps another replica rotated a moment ago.
            self.refresh(true);
        }
        let ring = self.ring.read();
        let cipher = ring.ciphers.get(id).ok_or(OpenError::Invalid)?;
        let aad = aad(id);
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    &Nonce::from(<[u8; 12]>::try_from(&raw[..12]).map_err(|_| OpenError::Invalid)?),
                    Payload {
                        msg: &raw[12..],
                        aad: &aad,
                    },
                )
                .map_err(|_| OpenError::Invalid)?,
        );
        let s = decode_session(&plain).ok_or(OpenError::Invalid)?;
        if s.exp <= now {
            return Err(OpenError::Expired);
        }
        Ok(s)
    }

    /// Makes a new key current. The previous one keeps opening the sessions
    /// it sealed until they expire; keys retired long enough ago that no
    /// session of theirs can be alive are deleted. With `drop_old`, every
    /// other key is deleted now (for a key that may have leaked: its
    /// sessions end at once and their guests attest again).
    pub fn rotate(&self, drop_old: bool) -> Result<SessionKeyInfo, StoreError> {
        // No re-read started before the rotation may install its older
        // keyring after it.
        let _loading = self.loading.lock();
        let now = unix_now();
        let previous = self
            .store
            .get(ns::KEYS, CURRENT)?
            .and_then(|b| String::from_utf8(b).ok());
        let id = new_key_id();
        Self::create_key(&self.store, &self.kek, &id)?;
        self.store.put(ns::KEYS, CURRENT, id.as_bytes())?;
        let keep_for = self.max_session_secs.max(MIN_RETENTION_SECS);
        for (other, mut record) in Self::records(&self.store)? {
            if other == id {
                continue;
            }
            let expired = record.retired.is_some_and(|r| r + keep_for < now);
            if drop_old || expired {
                self.store.delete(ns::KEYS, &store_key(&other))?;
            } else if record.retired.is_none() || previous.as_deref() == Some(other.as_str()) {
                record.retired.get_or_insert(now);
                let bytes =
                    serde_json::to_vec(&record).map_err(|e| StoreError::Backend(e.to_string()))?;
                self.store.put(ns::KEYS, &store_key(&other), &bytes)?;
            }
        }
        *self.ring.write() = Self::load(&self.store, &self.kek)?;
        tracing::info!(key = %id, drop_old, "session key rotated");
        Ok(SessionKeyInfo {
            id,
            created: now,
            retired: None,
            current: true,
        })
    }

    /// The session keys, current first.
    pub fn keys(&self) -> Result<Vec<SessionKeyInfo>, StoreError> {
        let current = self
            .store
            .get(ns::KEYS, CURRENT)?
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        let mut out: Vec<SessionKeyInfo> = Self::records(&self.store)?
            .into_iter()
            .map(|(id, r)| SessionKeyInfo {
                current: id == current,
                id,
                created: r.created,
                retired: r.retired,
            })
            .collect();
        out.sort_by_key(|k| (!k.current, std::cmp::Reverse(k.created)));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_store::SqliteStore;
    use sha2::{Digest, Sha256};

    fn session(nonce: &str, exp: i64) -> Session {
        Session {
            nonce: nonce.into(),
            tee: "sample".into(),
            exp,
            attested: None,
        }
    }

    fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("db")).unwrap());
        (dir, store)
    }

    /// Reads of the current key id wait, while `hold` is set, until the
    /// test lets them go; it says when one is waiting.
    struct SlowKeys {
        hold: std::sync::atomic::AtomicBool,
        waiting: std::sync::mpsc::SyncSender<()>,
        go: parking_lot::Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl crate::test_store::Twist for SlowKeys {
        fn before_get(&self, _ns: &str, key: &str) {
            if key == CURRENT && self.hold.load(std::sync::atomic::Ordering::SeqCst) {
                self.waiting.send(()).unwrap();
                self.go.lock().recv().unwrap();
            }
        }
    }

    /// The periodic re-read of the keys happens without holding them:
    /// while one thread waits on the store, the others seal and open.
    #[test]
    fn a_slow_key_reread_holds_up_no_other_session() {
        let (_d, inner) = store();
        let (waiting, waited) = std::sync::mpsc::sync_channel(1);
        let (release, go) = std::sync::mpsc::channel();
        let slow = Arc::new(crate::test_store::Twisted {
            inner,
            twist: SlowKeys {
                hold: false.into(),
                waiting,
                go: parking_lot::Mutex::new(go),
            },
        });
        let store: Arc<dyn Store> = slow.clone();
        let kek = Arc::new(Kek::from_bytes(&[1; 32]));
        let sealer = Arc::new(SessionSealer::load_or_create(&store, kek, 300).unwrap());
        let cookie = sealer.seal(&session("n", 100));
        slow.twist
            .hold
            .store(true, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(RECHECK);
        let loader = {
            let sealer = sealer.clone();
            std::thread::spawn(move || sealer.seal(&session("a", 100)))
        };
        waited.recv().unwrap();
        // The loader is inside the store now; the rest goes on.
        let (done, finished) = std::sync::mpsc::channel();
        let other = {
            let (sealer, cookie) = (sealer.clone(), cookie.clone());
            std::thread::spawn(move || {
                let c = sealer.seal(&session("b", 100));
                let opened = sealer.open(&cookie, 50).map(|s| s.nonce);
                done.send((c, opened)).unwrap();
            })
        };
        let (c, opened) = finished
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("sealing waited for the key re-read");
        assert_eq!(opened.unwrap(), "n");
        assert_eq!(sealer.open(&c, 50).unwrap().nonce, "b");
        slow.twist
            .hold
            .store(false, std::sync::atomic::Ordering::SeqCst);
        release.send(()).unwrap();
        let a = loader.join().unwrap();
        other.join().unwrap();
        assert_eq!(sealer.open(&a, 50).unwrap().nonce, "a");
    }

    #[test]
    fn round_trip_forgery_and_expiry() {
        let (_d, store) = store();
        let kek = Arc::new(Kek::from_bytes(&[1; 32]));
        let a = SessionSealer::load_or_create(&store, kek.clone(), 300).unwrap();
        let b = SessionSealer::load_or_create(&store, kek.clone(), 300).unwrap();
        let c = a.seal(&session("n", 100));
        assert!(c.starts_with("2."), "{c}");
        assert_eq!(
            b.open(&c, 50).unwrap().nonce,
            "n",
            "a replica sharing the store opens it"
        );
        assert_eq!(b.open(&c, 100).err(), Some(OpenError::Expired));
        let (head, body) = c.rsplit_once('.').unwrap();
        let mut raw = B64URL.decode(body).unwrap();
        raw[20] ^= 1;
        let altered = format!("{head}.{}", B64URL.encode(raw));
        assert_eq!(a.open(&altered, 50).err(), Some(OpenError::Invalid));
        for bad in [
            "not-base64!",
            "2.zzzzzzzz.AAAA",
            "",
            "2..",
            "1.00000000.AAAA",
        ] {
            assert_eq!(a.open(bad, 50).err(), Some(OpenError::Invalid), "{bad}");
        }
        let (_d2, other) = self::store();
        let foreign = SessionSealer::load_or_create(&other, kek, 300).unwrap();
        assert_eq!(foreign.open(&c, 50).err(), Some(OpenError::Invalid));
    }

    /// An attested session round-trips to the very token bytes, and a
    /// TPM-sized token (24 PCRs, the runtime data, the trust vector) makes
    /// a cookie well under the 4 KiB browsers and proxies accept.
    #[test]
    fn attested_sessions_round_trip_and_stay_small() {
        let (_d, store) = store();
        let kek = Arc::new(Kek::from_bytes(&[2; 32]));
        let s = SessionSealer::load_or_create(&store, kek, 300).unwrap();
        let mut tpm = serde_json::Map::new();
        for i in 0..24u8 {
            tpm.insert(
                format!("pcr{i:02}"),
                hex::encode(Sha256::digest([i])).into(),
            );
        }
        let claims = serde_json::json!({"submods": {"cpu0": {
            "ear.status": "affirming",
            "ear.trustworthiness-vector": {"configuration": 2, "executables": 3, "hardware": 2},
            "ear.veraison.annotated-evidence": {"tpm": tpm, "report_data": hex::encode([7u8; 64]),
                "runtime_data_claims": {"nonce": B64.encode([1u8; 32]), "tee-pubkey": {"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW", "x": B64URL.encode([3u8; 32]), "y": B64URL.encode([4u8; 32])}}}}},
            "exp": 1000, "iat": 700, "iss": "cocoon-trustee"});
        let token = format!(
            "{}.{}.{}",
            B64URL.encode(r#"{"alg":"ES256","typ":"JWT"}"#),
            B64URL.encode(claims.to_string()),
            B64URL.encode([9u8; 64])
        );
        let mut sess = session("n", 1000);
        sess.attested = Some(Attested {
            token: token.clone(),
            token_exp: 1000,
        });
        let cookie = s.seal(&sess);
        let opened = s.open(&cookie, 10).unwrap();
        assert_eq!(opened.attested.unwrap().token, token);
        assert!(
            cookie.len() < 4096,
            "{} bytes (token {})",
            cookie.len(),
            token.len()
        );
    }

    /// A cookie presented under another key id does not open, even when
    /// that key exists: the id is bound into the associated data.
    #[test]
    fn key_id_is_bound() {
        let (_d, store) = store();
        let kek = Arc::new(Kek::from_bytes(&[1; 32]));
        let s = SessionSealer::load_or_create(&store, kek, 300).unwrap();
        let old = s.seal(&session("n", 100));
        let new_id = s.rotate(false).unwrap().id;
        let (_, rest) = old.split_once('.').unwrap();
        let (_, body) = rest.split_once('.').unwrap();
        let renamed = format!("2.{new_id}.{body}");
        assert_eq!(s.open(&renamed, 50).err(), Some(OpenError::Invalid));
        assert_eq!(s.open(&old, 50).unwrap().nonce, "n");
    }

    /// After a rotation on one replica, sessions sealed before it keep
    /// opening everywhere until they expire; new sessions use the new key,
    /// which the other replica learns from the first cookie it meets.
    #[test]
    fn rotation_keeps_sessions_in_flight() {
        let (_d, store) = store();
        let kek = Arc::new(Kek::from_bytes(&[7; 32]));
        let a = SessionSealer::load_or_create(&store, kek.clone(), 300).unwrap();
        let b = SessionSealer::load_or_create(&store, kek.clone(), 300).unwrap();
        let before = a.seal(&session("before", 1000));
        let old_id = a.keys().unwrap()[0].id.clone();
        let new = a.rotate(false).unwrap();
        assert_ne!(new.id, old_id);
        let after = a.seal(&session("after", 1000));
        assert!(after.starts_with(&format!("2.{}.", new.id)), "{after}");
        assert_eq!(
            b.open(&after, 10).unwrap().nonce,
            "after",
            "b learns the new key"
        );
        assert_eq!(b.open(&before, 10).unwrap().nonce, "before");
        assert_eq!(a.open(&before, 10).unwrap().nonce, "before");
        let keys = a.keys().unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys[0].current && keys[0].id == new.id && keys[0].retired.is_none());
        assert!(!keys[1].current && keys[1].retired.is_some());
        // Dropping the old keys ends their sessions at once.
        let fresh = a.rotate(true).unwrap();
        assert_eq!(a.keys().unwrap().len(), 1);
        assert_eq!(a.open(&before, 10).err(), Some(OpenError::Invalid));
        assert_eq!(a.open(&after, 10).err(), Some(OpenError::Invalid));
        assert!(a.seal(&session("x", 1000)).contains(&fresh.id));
    }

    /// A retired key outlives every session it sealed, then goes.
    #[test]
    fn retired_keys_are_deleted_once_no_session_can_use_them() {
        let (_d, store) = store();
        let kek = Arc::new(Kek::from_bytes(&[3; 32]));
        let s = SessionSealer::load_or_create(&store, kek, 300).unwrap();
        let first = s.keys().unwrap()[0].id.clone();
        s.rotate(false).unwrap();
        // Backdate the first key's retirement past the retention.
        let k = store_key(&first);
        let mut r: KeyRecord =
            serde_json::from_slice(&store.get(ns::KEYS, &k).unwrap().unwrap()).unwrap();
        r.retired = Some(unix_now() - MIN_RETENTION_SECS - 10);
        store
            .put(ns::KEYS, &k, &serde_json::to_vec(&r).unwrap())
            .unwrap();
        s.rotate(false).unwrap();
        let ids: Vec<String> = s.keys().unwrap().into_iter().map(|k| k.id).collect();
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert!(!ids.contains(&first));
    }
}
