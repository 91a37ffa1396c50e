//! The embedded store: one SQLite file in WAL mode. Several processes may
//! open the same file (replicas sharing a data directory); writers wait on
//! SQLite's lock instead of failing.
//!
//! Reads of resources are kept in memory for [`FRESH`]: every release
//! reads its resource, and a read from the file costs a read transaction
//! (two `fcntl` locks and a page lookup) each time. This process's own
//! writes replace what it kept at once; a write by another process on the
//! same file is seen within [`FRESH`], as policy changes are. What is kept
//! is what the file holds: the sealed bytes, never plaintext.

use crate::{Event, Store, StoreError, now};
use parking_lot::{Mutex, RwLock};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const POOL_SIZE: usize = 4;

/// The namespace whose reads are kept (see the module's documentation).
const KEPT: &str = crate::ns::RESOURCES;
/// How long a kept read is used before the file is asked again.
pub const FRESH: Duration = Duration::from_millis(250);
/// Kept reads at most, and their bytes at most; past either, reads are
/// served but not kept until older ones expire.
const KEPT_ENTRIES: usize = 4096;
const KEPT_BYTES: usize = 16 << 20;

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    pool: Vec<Mutex<Connection>>,
    next: AtomicUsize,
    kept: Kept,
}

/// Recent reads of the [`KEPT`] namespace.
#[derive(Default)]
struct Kept {
    /// Changes with every write to the kept namespace: a read that began
    /// before one may have seen the old value and must not be kept.
    epoch: AtomicU64,
    inner: RwLock<KeptInner>,
}

/// When a value was read, and the value (`None`: absent).
type Read = (Instant, Option<Vec<u8>>);

#[derive(Default)]
struct KeptInner {
    /// By key.
    values: HashMap<String, Read>,
    /// What the kept values weigh ([`kept_size`]).
    bytes: usize,
    /// When expired entries were last dropped: at most once per [`FRESH`],
    /// so reads of many distinct keys cannot make every miss scan the map.
    expired: Option<Instant>,
}

fn kept_size(key: &str, value: &Option<Vec<u8>>) -> usize {
    key.len() + value.as_ref().map_or(0, Vec::len) + 64
}

impl Kept {
    fn get(&self, key: &str) -> Option<Option<Vec<u8>>> {
        let inner = self.inner.read();
        let (at, value) = inner.values.get(key)?;
        (at.elapsed() < FRESH).then(|| value.clone())
    }

    /// Keeps a value read from the file since `epoch` and `began` were
    /// taken, unless a write came in between or the bounds are reached. Its
    /// age counts from `began`: a write by another process after the read
    /// began is seen within [`FRESH`] of it, however long the read took.
    fn keep(&self, epoch: u64, began: Instant, key: &str, value: &Option<Vec<u8>>) {
        let size = kept_size(key, value);
        let mut guard = self.inner.write();
        // Checked under the lock writes take to invalidate.
        if self.epoch.load(Ordering::SeqCst) != epoch {
            return;
        }
        let inner = &mut *guard;
        if inner.expired.is_none_or(|t| t.elapsed() >= FRESH) {
            inner.expire();
        }
        if inner.values.len() >= KEPT_ENTRIES || inner.bytes + size > KEPT_BYTES {
            return;
        }
        if let Some((_, old)) = inner.values.insert(key.to_string(), (began, value.clone())) {
            inner.bytes -= kept_size(key, &old);
        }
        inner.bytes += size;
    }

    /// After a write to `ns`/`key` (committed or not): forget it, and
    /// keep no read that was under way.
    fn forget(&self, ns: &str, key: &str) {
        if ns != KEPT {
            return;
        }
        let mut guard = self.inner.write();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let inner = &mut *guard;
        if let Some((_, old)) = inner.values.remove(key) {
            inner.bytes -= kept_size(key, &old);
        }
    }
}

impl KeptInner {
    fn expire(&mut self) {
        self.expired = Some(Instant::now());
        let mut bytes = 0;
        self.values.retain(|k, (at, v)| {
            let fresh = at.elapsed() < FRESH;
            if fresh {
                bytes += kept_size(k, v);
            }
            fresh
        });
        self.bytes = bytes;
    }
}

fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Backend(format!("{}: {e}", dir.display())))?;
        }
        let first = open(path)?;
        first.execute_batch(
            "CREATE TABLE IF NOT EXISTS kv (
                 ns TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
                 PRIMARY KEY (ns, key)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS events (
                 id INTEGER PRIMARY KEY AUTOINCREMENT, ns TEXT NOT NULL,
                 at INTEGER NOT NULL, value BLOB NOT NULL);
             CREATE INDEX IF NOT EXISTS events_ns ON events (ns, id);
             CREATE TABLE IF NOT EXISTS audit (
                 seq INTEGER PRIMARY KEY, value BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS audit_batch (
                 id TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;",
        )?;
        let mut pool = vec![Mutex::new(first)];
        for _ in 1..POOL_SIZE {
            pool.push(Mutex::new(open(path)?));
        }
        Ok(Self {
            pool,
            next: AtomicUsize::new(0),
            kept: Kept::default(),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        crate::may_wait()?;
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..POOL_SIZE {
            if let Some(conn) = self.pool[(start + i) % POOL_SIZE].try_lock() {
                return f(&conn);
            }
        }
        let conn = self.pool[start % POOL_SIZE].lock();
        f(&conn)
    }
}

impl Store for SqliteStore {
    fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let kept = ns == KEPT;
        if let Some(hit) = kept.then(|| self.kept.get(key)).flatten() {
            return Ok(hit);
        }
        let epoch = self.kept.epoch.load(Ordering::SeqCst);
        let began = Instant::now();
        let value: Option<Vec<u8>> = self.with(|c| {
            Ok(
                c.prepare_cached("SELECT value FROM kv WHERE ns = ?1 AND key = ?2")?
                    .query_row(params![ns, key], |r| r.get(0))
                    .optional()?,
            )
        })?;
        if kept {
            self.kept.keep(epoch, began, key, &value);
        }
        Ok(value)
    }

    fn put(&self, ns: &str, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let r = self.with(|c| {
            c.prepare_cached("INSERT OR REPLACE INTO kv (ns, key, value) VALUES (?1, ?2, ?3)")?
                .execute(params![ns, key, value])?;
            Ok(())
        });
        self.kept.forget(ns, key);
        r
    }

    fn put_if_absent(&self, ns: &str, key: &str, value: &[u8]) -> Result<bool, StoreError> {
        let r = self.with(|c| {
            let n = c
                .prepare_cached("INSERT OR IGNORE INTO kv (ns, key, value) VALUES (?1, ?2, ?3)")?
                .execute(params![ns, key, value])?;
            Ok(n == 1)
        });
        self.kept.forget(ns, key);
        r
    }

    fn delete(&self, ns: &str, key: &str) -> Result<bool, StoreError> {
        let r = self.with(|c| {
            let n = c
                .prepare_cached("DELETE FROM kv WHERE ns = ?1 AND key = ?2")?
                .execute(params![ns, key])?;
            Ok(n > 0)
        });
        self.kept.forget(ns, key);
        r
    }

    fn list(&self, ns: &str) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare_cached("SELECT key FROM kv WHERE ns = ?1 ORDER BY key")?;
            let rows = st.query_map(params![ns], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn append(&self, ns: &str, value: &[u8], keep: usize) -> Result<i64, StoreError> {
        self.with(|c| {
            c.prepare_cached("INSERT INTO events (ns, at, value) VALUES (?1, ?2, ?3)")?
                .execute(params![ns, now(), value])?;
            let id = c.last_insert_rowid();
            c.prepare_cached("DELETE FROM events WHERE ns = ?1 AND id <= ?2")?
                .execute(params![ns, id - keep as i64])?;
            Ok(id)
        })
    }

    fn audit_append(
        &self,
        batch: Option<&str>,
        make: &mut crate::MakeRecords<'_>,
    ) -> Result<i64, StoreError> {
        self.with(|c| {
            // IMMEDIATE: the write lock from the start, so two writers (two
            // processes on one database) cannot both chain to the same last
            // record.
            c.execute_batch("BEGIN IMMEDIATE")?;
            let mut run = || -> Result<i64, StoreError> {
                if let Some(id) = batch {
                    let seen = c
                        .prepare_cached("SELECT 1 FROM audit_batch WHERE id = ?1")?
                        .query_row([id], |_| Ok(()))
                        .optional()?;
                    if seen.is_some() {
                        return Ok(0);
                    }
                }
                let last: Option<(i64, Vec<u8>)> = c
                    .prepare_cached("SELECT seq, value FROM audit ORDER BY seq DESC LIMIT 1")?
                    .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                let first = last.as_ref().map_or(1, |(s, _)| s + 1);
                let mut wrote = 0;
                for (seq, value) in
                    (first..).zip(make(last.as_ref().map(|(s, v)| (*s, v.as_slice()))))
                {
                    c.prepare_cached("INSERT INTO audit (seq, value) VALUES (?1, ?2)")?
                        .execute(params![seq, value])?;
                    wrote = seq;
                }
                if let (Some(id), true) = (batch, wrote > 0) {
                    c.prepare_cached("INSERT INTO audit_batch (id, seq) VALUES (?1, ?2)")?
                        .execute(params![id, wrote])?;
                }
                Ok(wrote)
            };
            let outcome = run().and_then(|seq| {
                c.execute_batch("COMMIT")?;
                Ok(seq)
            });
            if outcome.is_err() {
                // A failed statement or COMMIT must not leave this pooled
                // connection holding the write lock.
                let _ = c.execute_batch("ROLLBACK");
            }
            outcome
        })
    }

    fn audit_prune(&self, before: i64) -> Result<u64, StoreError> {
        self.with(|c| {
            c.execute_batch("BEGIN IMMEDIATE")?;
            let run = || -> Result<u64, StoreError> {
                let n = c
                    .prepare_cached("DELETE FROM audit WHERE seq < ?1")?
                    .execute([before])?;
                c.prepare_cached("DELETE FROM audit_batch WHERE seq < ?1")?
                    .execute([before])?;
                c.execute_batch("COMMIT")?;
                Ok(n as u64)
            };
            let outcome = run();
            if outcome.is_err() {
                let _ = c.execute_batch("ROLLBACK");
            }
            outcome
        })
    }

    fn audit_last(&self) -> Result<Option<i64>, StoreError> {
        self.with(|c| {
            Ok(c.prepare_cached("SELECT max(seq) FROM audit")?
                .query_row([], |r| r.get::<_, Option<i64>>(0))?)
        })
    }

    fn audit_range(&self, from: i64, limit: usize) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT seq, value FROM audit WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = st.query_map(params![from, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn recent(&self, ns: &str, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT id, at, value FROM events WHERE ns = ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = st.query_map(params![ns, limit as i64], |r| {
                Ok(Event {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    value: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }
}
