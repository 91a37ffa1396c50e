//! The audit log: every resource release, denial, token issued and admin
//! change, appended as a JSON record that names the SHA-256 of the record
//! before it (a hash chain), with checkpoints signed by the trustee's
//! audit key every so many records and at each start. No secret, token or
//! evidence is ever in a record: names, outcomes and reasons only.
//!
//! A record is stored as the exact bytes hashed:
//! `{"seq":N,"time":UNIX,"kind":K,...fields,"prev":"<hex sha256 of record N-1>"}`;
//! a checkpoint adds `"sig"`: Ed25519 over
//! `"cocoon-audit-checkpoint-v1" || N (8 bytes, big-endian) || prev`.
//! Since `prev` covers every record before, a checkpoint signs the whole
//! log up to it; [`verify`] checks a log against the audit public key.

use cocoon_store::{Store, StoreError};
use ed25519_dalek::{Signer, Verifier};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;

/// The `prev` of record 1.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const CHECKPOINT_DOMAIN: &[u8] = b"cocoon-audit-checkpoint-v1";

/// One event to record.
#[derive(Debug, Clone)]
pub struct Entry {
    /// `release`, `denial`, `token`, `admin`, `start`.
    pub kind: &'static str,
    /// What happened (names and outcomes only).
    pub fields: Map<String, Value>,
}

impl Entry {
    pub fn new(kind: &'static str, fields: Value) -> Self {
        let fields = match fields {
            Value::Object(m) => m,
            other => {
                let mut m = Map::new();
                m.insert("detail".into(), other);
                m
            }
        };
        Self { kind, fields }
    }
}

/// The writer: appends records (off the request path, through a bounded
/// queue) and signs a checkpoint every `every` records.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Entry>,
    public: ed25519_dalek::VerifyingKey,
}

struct Writer {
    store: Arc<dyn Store>,
    key: ed25519_dalek::SigningKey,
    every: u64,
    since_checkpoint: AtomicU64,
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// The bytes a checkpoint signs.
fn checkpoint_input(seq: u64, prev: &str) -> Vec<u8> {
    let mut m = CHECKPOINT_DOMAIN.to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(prev.as_bytes());
    m
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Writer {
    fn append(&self, e: &Entry, checkpoint: bool) -> Result<i64, StoreError> {
        let mut make = |last: Option<(i64, &[u8])>| -> Vec<u8> {
            let (seq, prev) = match last {
                Some((s, bytes)) => (s as u64 + 1, sha256_hex(bytes)),
                None => (1, GENESIS.to_string()),
            };
            let mut m = Map::new();
            m.insert("seq".into(), seq.into());
            m.insert("time".into(), now().into());
            m.insert("kind".into(), e.kind.into());
            for (k, v) in &e.fields {
                if !matches!(k.as_str(), "seq" | "time" | "kind" | "prev" | "sig") {
                    m.insert(k.clone(), v.clone());
                }
            }
            if checkpoint {
                let sig = self.key.sign(&checkpoint_input(seq, &prev));
                m.insert("checkpoint".into(), true.into());
                m.insert("prev".into(), prev.into());
                m.insert("sig".into(), hex::encode(sig.to_bytes()).into());
            } else {
                m.insert("prev".into(), prev.into());
            }
            serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
        };
        self.store.audit_append(&mut make)
    }

    fn record(&self, e: &Entry) {
        let n = self.since_checkpoint.fetch_add(1, Ordering::Relaxed) + 1;
        let checkpoint = n >= self.every;
        if checkpoint {
            self.since_checkpoint.store(0, Ordering::Relaxed);
        }
        if let Err(err) = self.append(e, checkpoint) {
            tracing::error!(error = %err, kind = e.kind, "audit record not written");
        }
    }
}

impl AuditLog {
    /// Starts the writer; writes a signed `start` checkpoint first (so a
    /// log always ends signed at the last start, whatever came before).
    pub fn start(
        store: Arc<dyn Store>,
        key: ed25519_dalek::SigningKey,
        every: u64,
        start: Entry,
    ) -> Result<Self, StoreError> {
        let w = Writer {
            store,
            key,
            every: every.max(1),
            since_checkpoint: AtomicU64::new(0),
        };
        w.append(&start, true)?;
        let public = w.key.verifying_key();
        let (tx, mut rx) = mpsc::channel::<Entry>(4096);
        let w = Arc::new(w);
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                let w = w.clone();
                // SQLite writes block: keep them off the async workers.
                let _ = tokio::task::spawn_blocking(move || w.record(&e)).await;
            }
        });
        Ok(Self { tx, public })
    }

    /// Queues a record. The request path never waits on the database: a
    /// full queue hands the record to a task that waits for room, so none
    /// is dropped.
    pub fn record(&self, e: Entry) {
        match self.tx.try_send(e) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(e)) => {
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    if tx.send(e).await.is_err() {
                        tracing::error!("audit writer stopped: record lost");
                    }
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("audit writer stopped: record lost");
            }
        }
    }

    /// The audit public key (SPKI PEM).
    pub fn public_key_pem(&self) -> String {
        crate::admin::AdminKey::Ed25519(self.public).to_pem()
    }
}

/// A verified log.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    /// Records read.
    pub records: u64,
    /// The last signed checkpoint: its number and the hash of its bytes.
    pub last_checkpoint: Option<(u64, String)>,
    /// The hash of the last record.
    pub head: String,
}

/// Checks a log (records in order, from number 1) against the audit
/// public key: numbers contiguous, every `prev` the hash of the record
/// before, every checkpoint's signature. `anchor` is a checkpoint a
/// previous verification saw (number, hash): it must still be there,
/// unchanged, which is how a log cut back past its last checkpoint shows.
pub fn verify(
    records: &[(i64, Vec<u8>)],
    key: &ed25519_dalek::VerifyingKey,
    anchor: Option<(u64, &str)>,
) -> Result<Verified, String> {
    let mut prev = GENESIS.to_string();
    let mut last_checkpoint = None;
    let mut anchor_seen = anchor.is_none();
    for (i, (row, bytes)) in records.iter().enumerate() {
        let want = i as u64 + 1;
        let r: Map<String, Value> = serde_json::from_slice(bytes)
            .map_err(|e| format!("record {want} is not a JSON object: {e}"))?;
        let seq = r.get("seq").and_then(Value::as_u64);
        if seq != Some(want) || *row != want as i64 {
            return Err(format!(
                "record {want} is missing or out of order: found number {} (stored as {row})",
                seq.map_or("none".into(), |s| s.to_string())
            ));
        }
        let p = r.get("prev").and_then(Value::as_str).unwrap_or_default();
        if p != prev {
            return Err(format!(
                "record {want} does not follow record {}: it names {p}, the chain has {prev} \
                 (record {} was changed, removed or inserted)",
                want - 1,
                want - 1
            ));
        }
        let hash = sha256_hex(bytes);
        if r.get("checkpoint").and_then(Value::as_bool) == Some(true) {
            let sig = r
                .get("sig")
                .and_then(Value::as_str)
                .and_then(|s| hex::decode(s).ok())
                .and_then(|b| ed25519_dalek::Signature::from_slice(&b).ok())
                .ok_or_else(|| format!("checkpoint {want} has no valid signature field"))?;
            key.verify(&checkpoint_input(want, &prev), &sig)
                .map_err(|_| format!("checkpoint {want} is not signed by the audit key"))?;
            last_checkpoint = Some((want, hash.clone()));
        }
        if let Some((a, h)) = anchor
            && a == want
        {
            if hash != h {
                return Err(format!(
                    "record {want} was checkpoint {a} when an earlier verification saw it and \
                     is now another record: the log was cut back and written again, or altered"
                ));
            }
            anchor_seen = true;
        }
        prev = hash;
    }
    if !anchor_seen {
        let (a, _) = anchor.unwrap_or_default();
        return Err(format!(
            "the log ends at record {} but an earlier verification saw checkpoint {a}: \
             it was cut back",
            records.len()
        ));
    }
    Ok(Verified {
        records: records.len() as u64,
        last_checkpoint,
        head: prev,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(n: u64, every: u64) -> (Vec<(i64, Vec<u8>)>, ed25519_dalek::SigningKey) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(cocoon_store::SqliteStore::open(&dir.path().join("db")).unwrap());
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let w = Writer {
            store: store.clone(),
            key: key.clone(),
            every,
            since_checkpoint: AtomicU64::new(0),
        };
        w.append(&Entry::new("start", serde_json::json!({})), true)
            .unwrap();
        for i in 1..n {
            w.record(&Entry::new(
                "release",
                serde_json::json!({"resource": format!("default/key/{i}")}),
            ));
        }
        (store.audit_range(1, 10_000).unwrap(), key)
    }

    #[test]
    fn two_replicas_on_one_database_keep_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let writers: Vec<_> = (0..2)
            .map(|_| {
                Arc::new(Writer {
                    store: Arc::new(cocoon_store::SqliteStore::open(&path).unwrap()),
                    key: key.clone(),
                    every: 7,
                    since_checkpoint: AtomicU64::new(0),
                })
            })
            .collect();
        let threads: Vec<_> = writers
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for n in 0..50 {
                        w.record(&Entry::new(
                            "admin",
                            serde_json::json!({"replica": i, "n": n}),
                        ));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let records = writers[0].store.audit_range(1, 1000).unwrap();
        assert_eq!(records.len(), 100);
        verify(&records, &key.verifying_key(), None).unwrap();
    }

    #[test]
    fn every_kind_of_tampering_is_found() {
        let (records, key) = log(12, 4);
        let vk = key.verifying_key();
        let ok = verify(&records, &vk, None).unwrap();
        assert_eq!(ok.records, 12);
        assert_eq!(ok.last_checkpoint.as_ref().map(|c| c.0), Some(9));

        let mut changed = records.clone();
        changed[4].1 = String::from_utf8(changed[4].1.clone())
            .unwrap()
            .replace("default/key/4", "default/key/X")
            .into_bytes();
        assert!(
            verify(&changed, &vk, None)
                .unwrap_err()
                .contains("record 6 does not follow record 5")
        );

        let mut deleted = records.clone();
        deleted.remove(6);
        assert!(
            verify(&deleted, &vk, None)
                .unwrap_err()
                .contains("record 7 is missing or out of order")
        );

        let mut inserted = records.clone();
        inserted.insert(3, (4, records[3].1.clone()));
        assert!(
            verify(&inserted, &vk, None)
                .unwrap_err()
                .contains("record 5 is missing or out of order")
        );

        let mut reordered = records.clone();
        reordered.swap(2, 3);
        assert!(verify(&reordered, &vk, None).is_err());

        // Cut back past the last checkpoint: only an earlier verification's
        // anchor tells.
        let (cp, hash) = ok.last_checkpoint.clone().unwrap();
        let cut = records[..(cp as usize - 1)].to_vec();
        assert!(
            verify(&cut, &vk, None).is_ok(),
            "a shorter log is consistent in itself"
        );
        let e = verify(&cut, &vk, Some((cp, &hash))).unwrap_err();
        assert!(e.contains("cut back"), "{e}");

        // A checkpoint signed by another key.
        let other = ed25519_dalek::SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert!(
            verify(&records, &other, None)
                .unwrap_err()
                .contains("checkpoint 1 is not signed")
        );
    }
}
