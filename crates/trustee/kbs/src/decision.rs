//! Resource-policy decisions. A decision is a pure function of the token,
//! the resource path, the query and the policy text, so it is cached by
//! those; the cache only saves work and any replica recomputes on a miss.

use parking_lot::RwLock;
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

#[derive(Hash, PartialEq, Eq)]
struct Key {
    token_id: String,
    request: String,
    policy: [u8; 32],
}

/// Bounded decision cache.
#[derive(Default)]
pub struct DecisionCache {
    map: RwLock<HashMap<Key, Decision>>,
}

impl DecisionCache {
    /// Cached decision, if any. `token_id` identifies the token (the digest
    /// of its whole text; the cache is only consulted after the token was
    /// verified).
    pub fn get(&self, token_id: &str, request: &str, policy: &[u8; 32]) -> Option<Decision> {
        let key = Key {
            token_id: token_id.to_string(),
            request: request.to_string(),
            policy: *policy,
        };
        self.map.read().get(&key).cloned()
    }

    /// Remembers a decision.
    pub fn put(&self, token_id: &str, request: &str, policy: &[u8; 32], d: Decision) {
        let mut m = self.map.write();
        if m.len() >= CAPACITY {
            m.clear();
        }
        m.insert(
            Key {
                token_id: token_id.to_string(),
                request: request.to_string(),
                policy: *policy,
            },
            d,
        );
    }
}
