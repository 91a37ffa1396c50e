//! A store for tests that behaves as another one, except where the test
//! makes it wait or fail (an answer lost after a commit, a slow read).

use cocoon_store::{Event, MakeRecords, Store, StoreError};
use std::sync::Arc;

/// What a test changes about the store it wraps.
pub(crate) trait Twist: Send + Sync {
    /// Runs before each `get`.
    fn before_get(&self, _ns: &str, _key: &str) {}
    /// Runs after each audit append that succeeded: an error replaces
    /// the answer (the records stay committed).
    fn after_audit_append(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// `inner`, with `twist`.
pub(crate) struct Twisted<T> {
    pub inner: Arc<dyn Store>,
    pub twist: T,
}

impl<T: Twist> Store for Twisted<T> {
    fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.twist.before_get(ns, key);
        self.inner.get(ns, key)
    }
    fn put(&self, ns: &str, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.inner.put(ns, key, value)
    }
    fn put_if_absent(&self, ns: &str, key: &str, value: &[u8]) -> Result<bool, StoreError> {
        self.inner.put_if_absent(ns, key, value)
    }
    fn delete(&self, ns: &str, key: &str) -> Result<bool, StoreError> {
        self.inner.delete(ns, key)
    }
    fn list(&self, ns: &str) -> Result<Vec<String>, StoreError> {
        self.inner.list(ns)
    }
    fn append(&self, ns: &str, value: &[u8], keep: usize) -> Result<i64, StoreError> {
        self.inner.append(ns, value, keep)
    }
    fn recent(&self, ns: &str, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.inner.recent(ns, limit)
    }
    fn audit_append(
        &self,
        batch: Option<&str>,
        make: &mut MakeRecords<'_>,
    ) -> Result<i64, StoreError> {
        let n = self.inner.audit_append(batch, make)?;
        self.twist.after_audit_append()?;
        Ok(n)
    }
    fn audit_last(&self) -> Result<Option<i64>, StoreError> {
        self.inner.audit_last()
    }
    fn audit_prune(&self, before: i64) -> Result<u64, StoreError> {
        self.inner.audit_prune(before)
    }
    fn audit_range(&self, from: i64, limit: usize) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        self.inner.audit_range(from, limit)
    }
}
