//! Reference Value Provider Service: named reference values (the expected
//! measurements the attestation policy compares claims with), each with an
//! expiry, kept in the trustee [`Store`].
//!
//! It accepts CoCo's RVPS message (`{"version":"0.1.0","type":"sample",
//! "payload":"<b64 JSON>"}`) and a direct typed API used by `cocoon admin`.

use base64::Engine;
use cocoon_store::{Store, StoreError, ns};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use time::{Duration, OffsetDateTime};

/// Default validity of a reference value, as CoCo's sample extractor uses.
pub const DEFAULT_VALIDITY: Duration = Duration::days(365);

/// RVPS errors.
#[derive(Debug, thiserror::Error)]
pub enum RvpsError {
    /// The RVPS message is not valid.
    #[error("invalid reference value message: {0}")]
    BadMessage(String),
    /// The name is empty or too long.
    #[error("reference value name must be 1-256 characters of [A-Za-z0-9_.:/-]")]
    BadName,
    /// A stored record does not parse: it is never read as absent.
    #[error(
        "stored reference value '{0}' is unreadable: set it again with `cocoon admin add-reference-value` or delete it"
    )]
    Unreadable(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One stored reference value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReferenceValue {
    /// The name policies query (`query_reference_value("<name>")`).
    pub name: String,
    /// The value returned to the policy, unchanged (usually a list of accepted values).
    pub value: Value,
    /// Expiry, Unix seconds. An expired value reads as absent.
    pub expires: i64,
}

impl ReferenceValue {
    /// Whether it has expired at `now` (Unix seconds).
    pub fn expired_at(&self, now: i64) -> bool {
        self.expires <= now
    }
}

/// The outcome of looking a reference value up.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// Set and current.
    Value(Value),
    /// Never set (or deleted).
    Missing,
    /// Set, but expired at `at` (Unix seconds): reads as absent, and the
    /// appraisal names it.
    Expired {
        /// Expiry, Unix seconds.
        at: i64,
    },
}

/// CoCo's RVPS registration message.
#[derive(Debug, Deserialize)]
pub struct RvpsMessage {
    /// Must be `0.1.0`.
    pub version: String,
    /// Extractor: `sample` is supported.
    #[serde(rename = "type")]
    pub kind: String,
    /// Extractor input: for `sample`, base64 of a JSON object `{name: value}`.
    pub payload: String,
}

/// How long a looked-up record is served from memory before the store is
/// read again: a value changed on another replica is seen within this
/// (plus the store's own propagation), one changed here at once. It is the
/// policies' recheck interval, so a policy and the values it reads move
/// together.
pub const RECHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// Records kept in memory at most (names come from policies, which may
/// build them from claims).
const CACHED: usize = 1024;

/// Records read for policies, and when.
#[derive(Default)]
struct Cache {
    entries: std::collections::HashMap<String, (std::time::Instant, Option<Arc<ReferenceValue>>)>,
    /// Moves on with every change made here: a read that started before
    /// one must not keep what it read.
    generation: u64,
}

impl Cache {
    fn changed(&mut self, name: &str) {
        self.entries.remove(name);
        self.generation += 1;
    }
}

/// The RVPS over a shared store.
#[derive(Clone)]
pub struct Rvps {
    store: Arc<dyn Store>,
    cache: Arc<parking_lot::Mutex<Cache>>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '/' | '-'))
}

/// `unix` (seconds) as RFC 3339, for people reading expiries and dates;
/// the number itself when it is out of range.
pub fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

impl Rvps {
    /// An RVPS over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            cache: Default::default(),
        }
    }

    /// Sets `name` to `value` until `expires` (default: one year from now).
    pub fn add(
        &self,
        name: &str,
        value: Value,
        expires: Option<OffsetDateTime>,
    ) -> Result<ReferenceValue, RvpsError> {
        if !valid_name(name) {
            return Err(RvpsError::BadName);
        }
        let rv = ReferenceValue {
            name: name.to_string(),
            value,
            expires: expires
                .unwrap_or_else(|| OffsetDateTime::now_utc() + DEFAULT_VALIDITY)
                .unix_timestamp(),
        };
        let bytes = serde_json::to_vec(&rv).map_err(|e| RvpsError::BadMessage(e.to_string()))?;
        let stored = self.store.put(ns::REFERENCE_VALUES, name, &bytes);
        // Even a failed write may have committed.
        self.cache.lock().changed(name);
        stored?;
        Ok(rv)
    }

    /// Registers every value of a CoCo RVPS message.
    pub fn register_message(&self, message: &[u8]) -> Result<Vec<String>, RvpsError> {
        let msg: RvpsMessage = serde_json::from_slice(message).map_err(|e| {
            RvpsError::BadMessage(format!("expected {{version, type, payload}}: {e}"))
        })?;
        if msg.version != "0.1.0" {
            return Err(RvpsError::BadMessage(format!(
                "version '{}' is not supported: use \"0.1.0\"",
                msg.version
            )));
        }
        if msg.kind != "sample" {
            return Err(RvpsError::BadMessage(format!(
                "extractor type '{}' is not supported: use \"sample\"",
                msg.kind
            )));
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(msg.payload.trim())
            .map_err(|_| RvpsError::BadMessage("payload is not base64".into()))?;
        let map: serde_json::Map<String, Value> = serde_json::from_slice(&raw)
            .map_err(|e| RvpsError::BadMessage(format!("payload is not a JSON object: {e}")))?;
        let mut names = Vec::new();
        for (name, value) in map {
            self.add(&name, value, None)?;
            names.push(name);
        }
        Ok(names)
    }

    /// The stored record for `name`, expired or not.
    pub fn record(&self, name: &str) -> Result<Option<ReferenceValue>, RvpsError> {
        match self.store.get(ns::REFERENCE_VALUES, name)? {
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|_| RvpsError::Unreadable(name.to_string())),
            None => Ok(None),
        }
    }

    /// What policies get for `name`, and why when it is not a value. A
    /// store failure or an unreadable record is an error, never "absent".
    /// Records are read from memory for up to [`RECHECK`].
    /// A name that could never be stored is missing (and not cached).
    pub fn lookup(&self, name: &str) -> Result<Lookup, RvpsError> {
        if !valid_name(name) {
            return Ok(Lookup::Missing);
        }
        let (cached, generation) = {
            let cache = self.cache.lock();
            let hit = cache
                .entries
                .get(name)
                .filter(|(at, _)| at.elapsed() < RECHECK)
                .map(|(_, rv)| rv.clone());
            (hit, cache.generation)
        };
        let rv = match cached {
            Some(rv) => rv,
            None => {
                let read = std::time::Instant::now();
                let rv = self.record(name)?.map(Arc::new);
                let mut cache = self.cache.lock();
                if cache.generation == generation {
                    if cache.entries.len() >= CACHED {
                        cache.entries.clear();
                    }
                    cache.entries.insert(name.to_string(), (read, rv.clone()));
                }
                rv
            }
        };
        Ok(match rv {
            Some(rv) if rv.expired_at(now()) => Lookup::Expired { at: rv.expires },
            Some(rv) => Lookup::Value(rv.value.clone()),
            None => Lookup::Missing,
        })
    }

    /// The value policies see for `name`: absent when missing or expired.
    pub fn query(&self, name: &str) -> Result<Option<Value>, RvpsError> {
        Ok(match self.lookup(name)? {
            Lookup::Value(v) => Some(v),
            Lookup::Missing | Lookup::Expired { .. } => None,
        })
    }

    /// Every stored reference value, expired ones included.
    pub fn list(&self) -> Result<Vec<ReferenceValue>, RvpsError> {
        let mut out = Vec::new();
        for name in self.store.list(ns::REFERENCE_VALUES)? {
            if let Some(rv) = self.record(&name)? {
                out.push(rv);
            }
        }
        Ok(out)
    }

    /// Removes `name`; returns whether it existed.
    pub fn delete(&self, name: &str) -> Result<bool, RvpsError> {
        let deleted = self.store.delete(ns::REFERENCE_VALUES, name);
        self.cache.lock().changed(name);
        Ok(deleted?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_store::SqliteStore;

    fn rvps() -> (tempfile::TempDir, Rvps) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).unwrap();
        (dir, Rvps::new(Arc::new(store)))
    }

    #[test]
    fn sample_message_round_trip() {
        let (_d, r) = rvps();
        let payload = base64::engine::general_purpose::STANDARD.encode(
            r#"{"svn":["1"],"launch_digest":["abcde"],"major_version":1,"minimum_minor_version":0}"#,
        );
        let msg = format!(r#"{{"version":"0.1.0","type":"sample","payload":"{payload}"}}"#);
        let mut names = r.register_message(msg.as_bytes()).unwrap();
        names.sort();
        assert_eq!(
            names,
            [
                "launch_digest",
                "major_version",
                "minimum_minor_version",
                "svn"
            ]
        );
        assert_eq!(r.query("svn").unwrap(), Some(serde_json::json!(["1"])));
        assert_eq!(
            r.query("major_version").unwrap(),
            Some(serde_json::json!(1))
        );
        assert_eq!(r.query("nope").unwrap(), None);
    }

    /// A change made here is seen at once; one made by another replica on
    /// the same store within [`RECHECK`], never later.
    #[test]
    fn lookups_follow_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("db")).unwrap());
        let (here, other) = (Rvps::new(store.clone()), Rvps::new(store));
        here.add("svn", serde_json::json!(["1"]), None).unwrap();
        assert_eq!(here.query("svn").unwrap(), Some(serde_json::json!(["1"])));
        here.add("svn", serde_json::json!(["2"]), None).unwrap();
        assert_eq!(here.query("svn").unwrap(), Some(serde_json::json!(["2"])));
        assert!(here.delete("svn").unwrap());
        assert_eq!(here.query("svn").unwrap(), None);

        here.add("svn", serde_json::json!(["3"]), None).unwrap();
        assert_eq!(here.query("svn").unwrap(), Some(serde_json::json!(["3"])));
        other.add("svn", serde_json::json!(["4"]), None).unwrap();
        std::thread::sleep(RECHECK);
        assert_eq!(here.query("svn").unwrap(), Some(serde_json::json!(["4"])));
    }

    /// Where nothing may block, a lookup the cache answers is served and
    /// one that would read the store asks to run again elsewhere.
    #[test]
    fn only_cached_lookups_run_where_nothing_may_block() {
        use cocoon_types::inline::without_blocking;
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("db")).unwrap());
        Rvps::new(store.clone())
            .add("svn", serde_json::json!(["1"]), None)
            .unwrap();
        let cold = Rvps::new(store);
        assert!(without_blocking(|| cold.query("svn")).is_none());
        assert_eq!(cold.query("svn").unwrap(), Some(serde_json::json!(["1"])));
        let warm = without_blocking(|| cold.query("svn")).expect("a cached value");
        assert_eq!(warm.unwrap(), Some(serde_json::json!(["1"])));
    }

    /// A record that does not parse is an error, not an absent value that
    /// a policy could read as "no requirement".
    #[test]
    fn unreadable_record_is_an_error() {
        let (_d, r) = rvps();
        r.store
            .put(ns::REFERENCE_VALUES, "tdx_mr_td", b"{not json")
            .unwrap();
        for e in [
            r.query("tdx_mr_td").unwrap_err(),
            r.lookup("tdx_mr_td").unwrap_err(),
        ] {
            assert!(
                matches!(&e, RvpsError::Unreadable(n) if n == "tdx_mr_td"),
                "{e}"
            );
        }
        assert!(r.list().is_err());
    }

    #[test]
    fn bad_messages_and_expiry() {
        let (_d, r) = rvps();
        assert!(r.register_message(b"{}").is_err());
        assert!(
            r.register_message(br#"{"version":"0.2.0","type":"sample","payload":"e30="}"#)
                .is_err()
        );
        assert!(
            r.register_message(br#"{"version":"0.1.0","type":"swid","payload":"e30="}"#)
                .is_err()
        );
        assert!(
            r.register_message(br#"{"version":"0.1.0","type":"sample","payload":"!"}"#)
                .is_err()
        );
        assert!(r.add("", Value::Null, None).is_err());
        r.add(
            "old",
            serde_json::json!(["x"]),
            Some(OffsetDateTime::now_utc() - Duration::seconds(1)),
        )
        .unwrap();
        assert_eq!(
            r.query("old").unwrap(),
            None,
            "expired values read as absent"
        );
        assert!(matches!(r.lookup("old").unwrap(), Lookup::Expired { .. }));
        assert_eq!(r.lookup("never").unwrap(), Lookup::Missing);
        assert_eq!(r.list().unwrap().len(), 1);
        assert!(r.delete("old").unwrap());
        assert!(r.list().unwrap().is_empty());
    }
}
