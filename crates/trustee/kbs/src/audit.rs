//! The audit log: every resource release, denial, token issued and admin
//! change, appended as a JSON record that names the SHA-256 of the record
//! before it (a hash chain), with checkpoints signed by the trustee's
//! audit key. No secret, token or evidence is ever in a record: names,
//! outcomes and reasons only (long texts cut to [`MAX_TEXT`]).
//!
//! A record is the canonical JSON text of an object (sorted keys, no
//! spaces, as `serde_json` writes a map), stored as the exact bytes hashed:
//! `{"kind":K,...,"prev":"<hex sha256 of record N-1>","seq":N,"time":UNIX}`.
//! A checkpoint also has `"checkpoint":true`, `"next_checkpoint":M` (the
//! number by which the next checkpoint must come) and `"sig"`: Ed25519
//! over `"cocoon-audit-checkpoint-v1\0"` and the record's own canonical
//! text without `sig`. Record 1 is always a checkpoint and carries a
//! random `log_id`, which every later checkpoint repeats (logs started
//! before that carry it in record 1 only). Since `prev` covers every
//! record before, a checkpoint
//! signs the whole log up to it, and since each checkpoint fixes where the
//! next must be, checkpoints cannot be removed: at most the records after
//! the last one are unsigned.
//!
//! The last record of each batch the background writer commits carries
//! a random `batch` id, which the store also keeps, in the same
//! transaction. A batch whose try failed as unavailable may have committed
//! all the same (the answer lost after the commit), or commit while it is
//! tried again: the store writes nothing for an id it has.

use crate::api::now;
use cocoon_store::{Store, StoreError};
use ed25519_dalek::{Signer, Verifier};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// The `prev` of record 1.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const CHECKPOINT_DOMAIN: &[u8] = b"cocoon-audit-checkpoint-v1\0";
/// Texts in records are cut to this many bytes (a path, a reason).
pub const MAX_TEXT: usize = 512;
/// Records written per transaction at most.
const BATCH: usize = 256;
/// How long the writer lets records gather after the first of a batch:
/// under load one commit (one fsync) then carries dozens of records
/// instead of one or two; records are written off the request path
/// anyway, so this only delays when they are on disk.
const GATHER: Duration = Duration::from_millis(10);
/// Records queued at most; past that a record is counted as lost and the
/// trustee reports itself not ready.
const QUEUE: usize = 65_536;

/// One event to record.
#[derive(Debug, Clone)]
pub struct Entry {
    /// `release`, `denial`, `token`, `admin`, `start`, `tamper`.
    pub kind: &'static str,
    /// When it happened (Unix seconds).
    pub time: i64,
    /// What happened (names and outcomes only).
    pub fields: Map<String, Value>,
}

/// Cuts every string in `v` to [`MAX_TEXT`] bytes (on a character boundary).
fn cut(v: Value) -> Value {
    match v {
        Value::String(s) if s.len() > MAX_TEXT => {
            let mut end = MAX_TEXT;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            Value::String(format!("{}…", &s[..end]))
        }
        Value::Array(a) => Value::Array(a.into_iter().take(32).map(cut).collect()),
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, cut(v))).collect()),
        other => other,
    }
}

impl Entry {
    pub fn new(kind: &'static str, fields: Value) -> Self {
        let fields = match cut(fields) {
            Value::Object(m) => m,
            other => {
                let mut m = Map::new();
                m.insert("detail".into(), other);
                m
            }
        };
        Self {
            kind,
            time: now(),
            fields,
        }
    }
}

/// The writer: appends records (off the request path, in batches) and
/// signs a checkpoint when one is due.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Entry>,
    writer: Arc<Writer>,
    public: ed25519_dalek::VerifyingKey,
    lost: Arc<AtomicU64>,
    /// Records queued and not yet written (or lost).
    pending: Arc<AtomicU64>,
}

/// Keys a record's fields may not set (the writer's own).
const RESERVED: [&str; 9] = [
    "batch",
    "seq",
    "time",
    "kind",
    "prev",
    "sig",
    "checkpoint",
    "next_checkpoint",
    "log_id",
];

struct Writer {
    store: Arc<dyn Store>,
    key: ed25519_dalek::SigningKey,
    every: u64,
    /// The number by which the next checkpoint must come, as this
    /// writer promised it.
    next_due: AtomicU64,
    /// The number and hash of the last record this writer committed. A
    /// batch that follows another writer's record starts with a
    /// checkpoint: the other writer's promise is not known here (replicas
    /// may have other intervals), and the new checkpoint replaces it with
    /// this one's. The hash tells this writer's record from another's of
    /// the same number (a commit lost in a database fail-over, then that
    /// number written again).
    last_own: parking_lot::Mutex<Option<(i64, String)>>,
    /// The log's `log_id` (record 1's), which every checkpoint carries, so
    /// a verifier can tell this log from another signed with the same key.
    log_id: parking_lot::Mutex<Option<String>>,
    /// Whether the log's first record was read for the id.
    log_id_looked: std::sync::atomic::AtomicBool,
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn signing_input(without_sig: &[u8]) -> Vec<u8> {
    let mut m = CHECKPOINT_DOMAIN.to_vec();
    m.extend_from_slice(without_sig);
    m
}

impl Writer {
    /// The record after `last` for `e`: a checkpoint when one is due by
    /// `next_due` (moved on by a checkpoint) or `force`d, signed over its
    /// own text; `batch` tags it with its batch's id.
    fn make(
        &self,
        last: Option<(i64, &[u8])>,
        e: &Entry,
        force: bool,
        batch: Option<&str>,
        next_due: &mut u64,
        log_id: &mut Option<String>,
    ) -> Vec<u8> {
        let (seq, prev) = match last {
            Some((s, bytes)) => (s as u64 + 1, sha256_hex(bytes)),
            None => (1, GENESIS.to_string()),
        };
        let mut m = Map::new();
        for (k, v) in &e.fields {
            if !RESERVED.contains(&k.as_str()) {
                m.insert(k.clone(), v.clone());
            }
        }
        m.insert("seq".into(), seq.into());
        m.insert("time".into(), e.time.into());
        m.insert("kind".into(), e.kind.into());
        m.insert("prev".into(), prev.into());
        if let Some(id) = batch {
            m.insert("batch".into(), id.into());
        }
        let checkpoint = force || seq == 1 || seq >= *next_due;
        if checkpoint {
            let next = seq + self.every;
            m.insert("checkpoint".into(), true.into());
            m.insert("next_checkpoint".into(), next.into());
            if seq == 1 {
                *log_id = Some(random_id());
            }
            if let Some(id) = log_id {
                m.insert("log_id".into(), id.clone().into());
            }
            let text = serde_json::to_vec(&m).expect("a map of JSON values serializes");
            let sig = self.key.sign(&signing_input(&text));
            m.insert("sig".into(), hex::encode(sig.to_bytes()).into());
            *next_due = next;
        }
        serde_json::to_vec(&m).expect("a map of JSON values serializes")
    }

    /// Writes `entries` in one transaction. The checkpoint promise moves
    /// on only once the batch is committed (a batch made again after
    /// another writer's records starts from the committed promise).
    fn write(&self, entries: &[Entry], force_first: bool) -> Result<i64, StoreError> {
        self.write_tagged(entries, force_first, None)
    }

    /// Writes one batch of the background writer; its last record
    /// carries `batch`, the batch's random id, which the store also keeps
    /// in the same transaction. `again`: an earlier try failed as
    /// unavailable, which may have come after the commit (a lost answer)
    /// or before a commit the database still completed; the store then
    /// knows the id and writes nothing.
    fn write_batch(&self, entries: &[Entry], batch: &str, again: bool) -> Result<(), StoreError> {
        let seq = self.write_tagged(entries, false, Some(batch))?;
        if again && seq == 0 && !entries.is_empty() {
            tracing::warn!(
                records = entries.len(),
                "audit records were committed before the database stopped answering: not written again"
            );
        }
        Ok(())
    }

    /// The log's id when it is not known yet (another replica wrote
    /// record 1 first): from the log's first record, if its signature
    /// holds. Read once the log has records; an empty log is looked at
    /// again on the next write, since another replica may write record 1
    /// between this look and this writer's own append.
    fn learn_log_id(&self) -> Result<(), StoreError> {
        if self.store.audit_last()?.is_none() {
            return Ok(());
        }
        self.log_id_looked.store(true, Ordering::Relaxed);
        *self.log_id.lock() = signed_log_id(self.store.as_ref(), &self.key.verifying_key());
        Ok(())
    }

    /// `batch` tags the last record and goes to the store with it.
    fn write_tagged(
        &self,
        entries: &[Entry],
        force_first: bool,
        batch: Option<&str>,
    ) -> Result<i64, StoreError> {
        if self.log_id.lock().is_none() && !self.log_id_looked.load(Ordering::Relaxed) {
            self.learn_log_id()?;
        }
        let (mut due, mut own, mut log_id) = (0, None, None);
        let seq = self.store.audit_append(batch, &mut |last| {
            due = self.next_due.load(Ordering::Relaxed);
            log_id = self.log_id.lock().clone();
            let first = last.map_or(1, |(s, _)| s + 1);
            let foreign = last.is_some_and(|(s, b)| {
                self.last_own
                    .lock()
                    .as_ref()
                    .is_none_or(|(n, h)| *n != s || *h != sha256_hex(b))
            });
            let mut out: Vec<Vec<u8>> = Vec::with_capacity(entries.len());
            for (i, e) in entries.iter().enumerate() {
                let prev = match out.last() {
                    Some(bytes) => Some((first + i as i64 - 1, bytes.as_slice())),
                    None => last,
                };
                let tag = if i + 1 == entries.len() { batch } else { None };
                let force = i == 0 && (force_first || foreign);
                let rec = self.make(prev, e, force, tag, &mut due, &mut log_id);
                out.push(rec);
            }
            own = out
                .last()
                .map(|r| (first + out.len() as i64 - 1, sha256_hex(r)));
            out
        })?;
        // Nothing written (no entries, or the batch was there already):
        // what the callback made never reached the log.
        if seq > 0 {
            self.next_due.store(due, Ordering::Relaxed);
            *self.last_own.lock() = own;
            *self.log_id.lock() = log_id;
        }
        Ok(seq)
    }
}

/// 128 random bits in hex: a log's `log_id`, a batch's `batch`.
fn random_id() -> String {
    let mut id = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
    hex::encode(id)
}

/// Why nothing was pruned.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// Nothing to remove (a request error).
    #[error("{0}")]
    Nothing(String),
    /// The records that would be kept do not verify.
    #[error("{0}")]
    Tampered(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Verifies the stored log from checkpoint `from` to its head, a page at a
/// time (the checkpoint's own `prev` is signed with it).
fn verify_stored(
    store: &dyn Store,
    from: u64,
    key: &ed25519_dalek::VerifyingKey,
) -> Result<(), String> {
    const PAGE: usize = 4096;
    let (mut at, mut prev, mut resume) = (from, None::<String>, None);
    loop {
        let rows = store
            .audit_range(at as i64, PAGE)
            .map_err(|e| e.to_string())?;
        let Some((_, head)) = rows.first() else {
            return match prev {
                Some(_) => Ok(()),
                None => Err(format!("record {from} is missing")),
            };
        };
        let p = prev.unwrap_or_else(|| own_prev(Some(head)));
        let v = verify_segment(&rows, at, &p, key, None, resume)?;
        if rows.len() < PAGE {
            return Ok(());
        }
        (at, prev, resume) = (at + rows.len() as u64, Some(v.head), v.next_due);
    }
}

/// The number of the newest checkpoint at or before record `at`.
fn newest_checkpoint(store: &dyn Store, at: i64) -> Result<Option<u64>, StoreError> {
    let Some(head) = store.audit_last()? else {
        return Ok(None);
    };
    let mut to = at.min(head);
    while to >= 1 {
        let lo = (to - 4095).max(1);
        let rows = store.audit_range(lo, (to - lo + 1) as usize)?;
        // A pruned log's range may run past `to`.
        if let Some((s, _)) = rows
            .iter()
            .rev()
            .find(|(s, b)| *s <= to && is_checkpoint(b))
        {
            return Ok(Some(*s as u64));
        }
        // Before the log's first record: nothing older.
        if rows.first().is_none_or(|(s, _)| *s > lo) {
            return Ok(None);
        }
        to = lo - 1;
    }
    Ok(None)
}

/// Whether a record's text says it is a checkpoint (not its signature).
fn is_checkpoint(record: &[u8]) -> bool {
    serde_json::from_slice::<Map<String, Value>>(record)
        .ok()
        .and_then(|m| m.get("checkpoint").and_then(Value::as_bool))
        == Some(true)
}

/// What the start found of the log before it.
fn check_tail(
    store: &dyn Store,
    key: &ed25519_dalek::VerifyingKey,
) -> Result<Option<(u64, Option<String>)>, String> {
    let err = |e: StoreError| e.to_string();
    let Some(head) = store.audit_last().map_err(err)? else {
        return Ok(None);
    };
    let start = newest_checkpoint(store, head)
        .map_err(err)?
        .ok_or("the log has no checkpoint at all (its first record must be one)")?
        as i64;
    // From the record before it (for its prev) to the head.
    let lo = (start - 1).max(1);
    let rows = store
        .audit_range(lo, (head - lo + 1) as usize)
        .map_err(err)?;
    let (prev, segment) = match rows.first() {
        Some((s, b)) if *s == start - 1 => (sha256_hex(b), &rows[1..]),
        _ if start == 1 => (GENESIS.to_string(), &rows[..]),
        // The first record of a pruned log: its `prev` is signed with it.
        first => (own_prev(first.map(|(_, b)| b.as_slice())), &rows[..]),
    };
    let v = verify_from(segment, start as u64, &prev, key, None)?;
    // A log written before checkpoints carried it: record 1's.
    let log_id = v.log_id.or_else(|| signed_log_id(store, key));
    Ok(v.next_due.map(|due| (due, log_id)))
}

/// The `log_id` of the log's first record (record 1, or the checkpoint a
/// pruned log starts with), when that record is a checkpoint whose
/// signature holds: never an id someone wrote into the database.
fn signed_log_id(store: &dyn Store, key: &ed25519_dalek::VerifyingKey) -> Option<String> {
    let (seq, first) = store.audit_range(1, 1).ok()?.into_iter().next()?;
    let prev = if seq == 1 {
        GENESIS.to_string()
    } else {
        own_prev(Some(&first))
    };
    let v = verify_from(&[(seq, first)], u64::try_from(seq).ok()?, &prev, key, None).ok()?;
    v.log_id
}

/// A record's own `prev` field (empty when it has none).
fn own_prev(record: Option<&[u8]>) -> String {
    record
        .and_then(|b| serde_json::from_slice::<Map<String, Value>>(b).ok())
        .and_then(|m| m.get("prev").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default()
}

impl AuditLog {
    /// Checks the log's tail (from its last signed checkpoint to its
    /// head), so the trustee never signs over records someone changed
    /// while it was down, then starts the writer with a signed `start`
    /// checkpoint. A tail that does not verify stops the start unless
    /// `accept_tampered`, which records a signed `tamper` checkpoint naming
    /// the problem instead.
    pub fn start(
        store: Arc<dyn Store>,
        key: ed25519_dalek::SigningKey,
        every: u64,
        start: Entry,
        accept_tampered: bool,
    ) -> Result<Self, String> {
        let public = key.verifying_key();
        let tail = check_tail(store.as_ref(), &public);
        let w = Arc::new(Writer {
            store,
            key,
            every: every.max(1),
            next_due: AtomicU64::new(
                tail.as_ref()
                    .ok()
                    .and_then(|t| t.as_ref())
                    .map_or(1, |t| t.0),
            ),
            last_own: Default::default(),
            log_id: parking_lot::Mutex::new(
                tail.as_ref()
                    .ok()
                    .and_then(|t| t.as_ref())
                    .and_then(|t| t.1.clone()),
            ),
            log_id_looked: Default::default(),
        });
        let mut first = vec![];
        match tail {
            Ok(_) => {}
            Err(problem) if accept_tampered => first.push(Entry::new(
                "tamper",
                serde_json::json!({"problem": problem, "accepted_by": "--audit-accept-tampered"}),
            )),
            Err(problem) => {
                return Err(format!(
                    "the audit log does not verify from its last checkpoint: {problem}. \
                     Investigate with cocoon audit verify; --audit-accept-tampered starts \
                     anyway and records this in the log"
                ));
            }
        }
        // Signed checkpoints both: a tamper record (when accepted), the start.
        for e in first.into_iter().chain([start]) {
            w.write(&[e], true).map_err(|e| e.to_string())?;
        }
        let (tx, mut rx) = mpsc::channel::<Entry>(QUEUE);
        let lost = Arc::new(AtomicU64::new(0));
        let lost_w = lost.clone();
        let pending = Arc::new(AtomicU64::new(0));
        let pending_w = pending.clone();
        let writer = w.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                let until = tokio::time::Instant::now() + GATHER;
                while batch.len() < BATCH {
                    let room = BATCH - batch.len();
                    match tokio::time::timeout_at(until, rx.recv_many(&mut batch, room)).await {
                        Ok(n) if n > 0 => {}
                        // Time is up, or every sender is gone.
                        _ => break,
                    }
                }
                let entries = Arc::new(std::mem::take(&mut batch));
                let n = entries.len() as u64;
                let id = Arc::new(random_id());
                let mut again = false;
                // While the database is unreachable the batch waits and is
                // tried again (the queue fills meanwhile, and a nearly full
                // queue makes the trustee not ready); other failures lose it.
                let mut pause = Duration::from_millis(100);
                loop {
                    let (w, e, id) = (w.clone(), entries.clone(), id.clone());
                    // Store writes block: keep them off the async workers.
                    match tokio::task::spawn_blocking(move || w.write_batch(&e, &id, again)).await {
                        Ok(Ok(())) => break,
                        Ok(Err(StoreError::Unavailable(e))) => {
                            again = true;
                            tracing::warn!(records = n, error = %e, "audit records wait for the database");
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_secs(2));
                        }
                        _ => {
                            let lost = lost_w.fetch_add(n, Ordering::Relaxed) + n;
                            tracing::error!(records = n, lost, "audit records not written");
                            break;
                        }
                    }
                }
                pending_w.fetch_sub(n, Ordering::Relaxed);
            }
        });
        Ok(Self {
            tx,
            writer,
            public,
            lost,
            pending,
        })
    }

    /// Removes the records before the newest signed checkpoint at or
    /// before record `before`, so that the log starts with that checkpoint.
    /// First a `prune` record naming it is written as a signed checkpoint
    /// of its own: a verifier accepts a log that does not start at record 1
    /// only with that record in it. Blocks on the store. The checkpoint
    /// and how many records went.
    pub fn prune(&self, before: u64) -> Result<(u64, u64), PruneError> {
        let store = self.writer.store.as_ref();
        let first = match store.audit_range(1, 1)?.first() {
            Some((s, _)) => *s as u64,
            None => return Err(PruneError::Nothing("the audit log is empty".into())),
        };
        let before = i64::try_from(before).unwrap_or(i64::MAX);
        let cp = newest_checkpoint(store, before)?.ok_or_else(|| {
            PruneError::Nothing(format!("no signed checkpoint at or before record {before}"))
        })?;
        if cp <= first {
            return Err(PruneError::Nothing(format!(
                "the log starts at record {first} already (the newest checkpoint at or before \
                 record {before} is {cp})"
            )));
        }
        // What is kept must verify from that checkpoint on (its signature
        // included): nothing is removed on the word of a record someone
        // marked as a checkpoint, or from a log that was changed.
        verify_stored(store, cp, &self.public).map_err(|why| {
            PruneError::Tampered(format!(
                "the audit log does not verify from checkpoint {cp} on, so nothing was removed: {why}"
            ))
        })?;
        let e = Entry::new("prune", serde_json::json!({"before": cp}));
        self.writer.write(&[e], true)?;
        let removed = store.audit_prune(cp as i64)?;
        Ok((cp, removed))
    }

    /// Queues a record; the request path never waits on the database. A
    /// full queue (the store far behind) loses the record, counts it and
    /// makes the trustee report itself not ready.
    pub fn record(&self, e: Entry) {
        self.pending.fetch_add(1, Ordering::Relaxed);
        if self.tx.try_send(e).is_err() {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            let lost = self.lost.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::error!(lost, "audit queue full or closed: record lost");
        }
    }

    /// Waits until every record queued so far is written (or counted
    /// lost), for at most `limit`; whether it got there. For a stop: what
    /// the trustee did is on disk before it exits.
    pub async fn flush(&self, limit: Duration) -> bool {
        let until = tokio::time::Instant::now() + limit;
        while self.pending.load(Ordering::Relaxed) > 0 {
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// Whether the queue is nine-tenths full (the store far behind).
    pub fn behind(&self) -> bool {
        self.tx.capacity() < QUEUE / 10
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
    /// The number by which the next checkpoint must come.
    pub next_due: Option<u64>,
    /// The hash of the last record.
    pub head: String,
    /// The `before` of each signed `prune` record read: the log may start
    /// at one of those numbers.
    pub prunes: Vec<u64>,
    /// The log's id, as its signed checkpoints name it (record 1, and every
    /// checkpoint written since checkpoints carry it).
    pub log_id: Option<String>,
}

/// Checks a whole log (records in order, from number 1, or from the
/// checkpoint a signed prune record names) against the
/// audit public key: each record canonical, numbers contiguous, every
/// `prev` the hash of the record before, record 1 a signed checkpoint,
/// every checkpoint's signature, and a checkpoint wherever the one before
/// said the next must be. `anchor` is a checkpoint a previous verification
/// saw (number, hash): it must still be there, unchanged, which is how a
/// log cut back past its last checkpoint shows.
pub fn verify(
    records: &[(i64, Vec<u8>)],
    key: &ed25519_dalek::VerifyingKey,
    anchor: Option<(u64, &str)>,
) -> Result<Verified, String> {
    let Some((row, bytes)) = records.first() else {
        return Err("the log is empty (record 1, the first start, is missing)".into());
    };
    let first = u64::try_from(*row).unwrap_or(0).max(1);
    if first == 1 {
        return verify_from(records, 1, GENESIS, key, anchor);
    }
    // A pruned log starts with a signed checkpoint (its `prev` signed with
    // it), and a signed prune record after it says the records before it
    // were removed. An anchor among those is gone with them.
    let anchor = anchor.filter(|(a, _)| *a >= first);
    let v = verify_from(records, first, &own_prev(Some(bytes)), key, anchor)?;
    if !v.prunes.contains(&first) {
        return Err(format!(
            "the log starts at record {first}: records 1-{} are missing, and no signed prune \
             record says they were removed",
            first - 1
        ));
    }
    Ok(v)
}
/// [`verify`] of the records from an earlier verification's last
/// checkpoint on (`records` start with it): that checkpoint must still be
/// the record it was (`anchor`: its number and hash), and everything after
/// it must chain to it and keep its promises. The records before it are not
/// read, so a change among them is found only by a whole verification.
pub fn verify_since(
    records: &[(i64, Vec<u8>)],
    key: &ed25519_dalek::VerifyingKey,
    anchor: (u64, &str),
) -> Result<Verified, String> {
    let Some((row, first)) = records.first() else {
        return Err(format!(
            "the log ends before record {0}, which an earlier verification saw as a \
             checkpoint: it was cut back",
            anchor.0
        ));
    };
    // The log starts after the anchor: pruned past it, which only a signed
    // prune record makes good, and the records given are the whole log.
    if u64::try_from(*row).is_ok_and(|r| r > anchor.0) {
        return verify(records, key, Some(anchor)).map_err(|e| {
            format!(
                "{e} (the log starts after record {}, which an earlier verification saw as a \
                 checkpoint)",
                anchor.0
            )
        });
    }
    // The anchor is trusted through its hash (checked below), its link
    // to the records before it through the verification that saw it.
    verify_from(records, anchor.0, &own_prev(Some(first)), key, Some(anchor))
}

/// [`verify`] of a segment starting at record `first` whose record before
/// hashes to `prev`; the segment must start with a checkpoint.
fn verify_from(
    records: &[(i64, Vec<u8>)],
    first: u64,
    prev: &str,
    key: &ed25519_dalek::VerifyingKey,
    anchor: Option<(u64, &str)>,
) -> Result<Verified, String> {
    verify_segment(records, first, prev, key, anchor, None)
}

/// [`verify_from`], or with `resume` (where the next checkpoint is due)
/// the continuation of a segment verified before, which need not start
/// with a checkpoint.
fn verify_segment(
    records: &[(i64, Vec<u8>)],
    first: u64,
    prev: &str,
    key: &ed25519_dalek::VerifyingKey,
    anchor: Option<(u64, &str)>,
    resume: Option<u64>,
) -> Result<Verified, String> {
    let mut prev = prev.to_string();
    let mut last_checkpoint = None;
    let mut next_due: Option<u64> = resume;
    let mut prunes = vec![];
    let mut log_id: Option<String> = None;
    let mut anchor_seen = anchor.is_none();
    for (i, (row, bytes)) in records.iter().enumerate() {
        let want = first + i as u64;
        let r: Map<String, Value> = serde_json::from_slice(bytes)
            .map_err(|e| format!("record {want} is not a JSON object: {e}"))?;
        if serde_json::to_vec(&r).ok().as_deref() != Some(bytes.as_slice()) {
            return Err(format!(
                "record {want} is not in canonical form (rewritten, or keys repeated)"
            ));
        }
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
                 (a record was changed, removed or inserted)",
                want - 1
            ));
        }
        let hash = sha256_hex(bytes);
        let is_checkpoint = r.get("checkpoint").and_then(Value::as_bool) == Some(true);
        if ((want == first && resume.is_none()) || Some(want) == next_due) && !is_checkpoint {
            return Err(match next_due {
                Some(d) if d == want => format!(
                    "record {want} is not a signed checkpoint, but the checkpoint before said the next \
                     would be there (checkpoints were removed or the log rewritten)"
                ),
                _ => format!("record {want} should be a signed checkpoint and is not"),
            });
        }
        if is_checkpoint {
            let sig = r
                .get("sig")
                .and_then(Value::as_str)
                .and_then(|s| hex::decode(s).ok())
                .and_then(|b| ed25519_dalek::Signature::from_slice(&b).ok())
                .ok_or_else(|| format!("checkpoint {want} has no valid signature field"))?;
            let mut unsigned = r.clone();
            unsigned.remove("sig");
            let text = serde_json::to_vec(&unsigned).unwrap_or_default();
            key.verify(&signing_input(&text), &sig)
                .map_err(|_| format!("checkpoint {want} is not signed by the audit key"))?;
            let next = r
                .get("next_checkpoint")
                .and_then(Value::as_u64)
                .filter(|n| *n > want)
                .ok_or_else(|| format!("checkpoint {want} does not say where the next one is"))?;
            next_due = Some(next);
            last_checkpoint = Some((want, hash.clone()));
            if r.get("kind").and_then(Value::as_str) == Some("prune")
                && let Some(b) = r.get("before").and_then(Value::as_u64)
            {
                prunes.push(b);
            }
            if let Some(id) = r.get("log_id").and_then(Value::as_str) {
                match &log_id {
                    Some(known) if known != id => {
                        return Err(format!(
                            "checkpoint {want} names log {id}, the checkpoints before it log \
                             {known}: records of two logs"
                        ));
                    }
                    _ => log_id = Some(id.to_string()),
                }
            }
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
            first + records.len() as u64 - 1
        ));
    }
    Ok(Verified {
        records: records.len() as u64,
        last_checkpoint,
        next_due,
        head: prev,
        prunes,
        log_id,
    })
}

#[cfg(test)]
mod tests;
