//! Trustee storage: a small key-value [`Store`] trait over namespaces, an
//! embedded SQLite implementation (one file under the data directory, WAL,
//! `synchronous=FULL` so an acknowledged write survives a crash), a
//! PostgreSQL one for replicas sharing a database, and the key-encryption
//! key that seals secrets at rest.

mod kek;
pub mod pkcs11;
mod postgres;
mod private_file;
mod sqlite;

pub use kek::{Kek, KekError};
pub use postgres::{PgStore, describe_database};
pub use private_file::{
    create_file_exclusive, create_private_file, replace_file, write_private_file,
};
pub use sqlite::{FRESH as SQLITE_FRESH, SqliteStore};

/// Namespaces the trustee uses. Values in [`ns::RESOURCES`] and [`ns::KEYS`]
/// are always sealed with the [`Kek`] before they reach a [`Store`].
pub mod ns {
    /// KBS resources (sealed).
    pub const RESOURCES: &str = "resources";
    /// Trustee key material: session key, token signing key (sealed).
    pub const KEYS: &str = "keys";
    /// Rego policies by id.
    pub const POLICIES: &str = "policies";
    /// RVPS reference values by name.
    pub const REFERENCE_VALUES: &str = "reference_values";
    /// Event log of denials (append-only, bounded).
    pub const DENIALS: &str = "denials";
    /// TPM attestation keys the `tpm` verifier trusts (public, not sealed).
    pub const TPM_AKS: &str = "tpm_aks";
}

/// Where nothing may block ([`cocoon_types::inline::without_blocking`]),
/// a call to the database fails at once instead of waiting on it, and the
/// work around it runs again where it may wait. Every backend asks this
/// before it touches its database (a backend's in-memory cache does not).
pub(crate) fn may_wait() -> Result<(), StoreError> {
    if cocoon_types::inline::may_block() {
        Ok(())
    } else {
        Err(StoreError::Unavailable(
            cocoon_types::inline::DEFERRED.into(),
        ))
    }
}

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or a statement failed.
    #[error("storage backend error: {0}")]
    Backend(String),
    /// The database cannot be reached right now (down, restarting, out of
    /// connections, too slow); the same call may succeed later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A sealed value could not be opened (wrong key-encryption key or tampering).
    #[error("stored value {0} cannot be decrypted: wrong key-encryption key or tampered database")]
    Unseal(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// Unix time, seconds.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// One appended event.
#[derive(Debug, Clone)]
pub struct Event {
    /// Monotonic id.
    pub id: i64,
    /// Unix time of the append, seconds.
    pub at: i64,
    /// The event body.
    pub value: Vec<u8>,
}

/// Makes the audit records to append after the last one (its number and
/// bytes), numbered from its number + 1. Called again, from a newer last
/// record, when another writer appended first: it must start over from
/// what it is given each time.
pub type MakeRecords<'a> = dyn FnMut(Option<(i64, &[u8])>) -> Vec<Vec<u8>> + 'a;

/// A key-value store with namespaces, shared by every trustee replica that
/// serves the same deployment.
pub trait Store: Send + Sync {
    /// Reads one value.
    fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Writes one value, replacing any previous one; durable on return.
    fn put(&self, ns: &str, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Writes a value only if the key is absent; returns whether it wrote.
    fn put_if_absent(&self, ns: &str, key: &str, value: &[u8]) -> Result<bool, StoreError>;
    /// Deletes one value; returns whether it existed.
    fn delete(&self, ns: &str, key: &str) -> Result<bool, StoreError>;
    /// Lists the keys of a namespace, sorted.
    fn list(&self, ns: &str) -> Result<Vec<String>, StoreError>;
    /// Appends an event, keeping at most `keep` newest ones in the namespace.
    fn append(&self, ns: &str, value: &[u8], keep: usize) -> Result<i64, StoreError>;
    /// The newest `limit` events, newest first.
    fn recent(&self, ns: &str, limit: usize) -> Result<Vec<Event>, StoreError>;
    /// Appends audit records atomically with respect to every other
    /// writer: `make` gets the last record (its sequence number and bytes)
    /// and returns the records that follow it, stored in one transaction
    /// as its number + 1, + 2, ... Durable on return; returns the last
    /// number written (0 if none).
    ///
    /// `batch`: an id stored in the same transaction. A batch whose id is
    /// stored already is not written again (0 is returned, `make` may not
    /// be called), so the try that follows an answer lost after the
    /// commit never writes its records twice.
    fn audit_append(
        &self,
        batch: Option<&str>,
        make: &mut MakeRecords<'_>,
    ) -> Result<i64, StoreError>;
    /// The number of the last audit record.
    fn audit_last(&self) -> Result<Option<i64>, StoreError>;
    /// Removes the audit records numbered below `before` (and the batch
    /// ids of batches that ended there), in one transaction; how many
    /// records went.
    fn audit_prune(&self, before: i64) -> Result<u64, StoreError>;
    /// Audit records from number `from` on, at most `limit`, in order.
    fn audit_range(&self, from: i64, limit: usize) -> Result<Vec<(i64, Vec<u8>)>, StoreError>;
    /// Whether the database answers now, past any cache (readiness).
    fn ping(&self) -> Result<(), StoreError> {
        self.get("meta", "readiness-probe").map(|_| ())
    }
}
