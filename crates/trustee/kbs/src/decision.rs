//! Resource-policy decisions. A decision that reads no reference value is
//! a pure function of the token, the resource path, the query and the
//! policy text, so it is cached by the digest of those; the cache only
//! saves work and any replica recomputes on a miss. Decisions whose policy
//! read reference values are not cached (a changed or expired value must
//! take effect at once). Keys are fixed-size digests, so what a request
//! sends cannot grow the cache beyond its entry count.

use parking_lot::RwLock;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

const CAPACITY: usize = 65_536;

/// A resource-policy outcome.
#[derive(Clone, Debug)]
pub struct Decision {
    /// Whether the resource may be released.
    pub allow: bool,
    /// Why not, from the policy's `deny_reasons` (admin eyes only).
    pub reasons: Arc<Vec<String>>,
}

/// What a decision is cached by: the verified token's digest, the request
/// (path and sorted query) and the policy's digest, hashed together.
pub fn decision_key(token: &[u8; 32], request: &str, policy: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(token);
    h.update(policy);
    h.update((request.len() as u64).to_le_bytes());
    h.update(request.as_bytes());
    h.finalize().into()
}

/// Bounded decision cache.
#[derive(Default)]
pub struct DecisionCache {
    map: RwLock<HashMap<[u8; 32], Decision>>,
}

impl DecisionCache {
    /// Cached decision, if any (the cache is only consulted after the
    /// token was verified).
    pub fn get(&self, key: &[u8; 32]) -> Option<Decision> {
        self.map.read().get(key).cloned()
    }

    /// Remembers a decision.
    pub fn put(&self, key: [u8; 32], d: Decision) {
        let mut m = self.map.write();
        if m.len() >= CAPACITY {
            m.clear();
        }
        m.insert(key, d);
    }
}
