//! The confidential image pipeline. Inside the guest: pull from an OCI
//! distribution registry, verify signatures against a policy, decrypt
//! ocicrypt layers (keys from local JWE keys or the KBS) and unpack an OCI
//! bundle, so the host never sees a decrypted layer. For owners: encrypt
//! and sign images, interoperable with skopeo and cosign.

mod apply;
pub mod bundle;
pub mod gunzip;
pub mod keys;
pub mod ocicrypt;
pub mod owner;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod signature;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod unpack;

use zeroize::Zeroizing;

/// Fetches confidential resources by `kbs:///repo/type/tag` URI: layer
/// KEKs, signature policies, verification keys, registry credentials. The
/// guest implements it with the KBS client after attestation.
#[async_trait::async_trait]
pub trait ResourceFetcher: Send + Sync {
    /// The raw resource bytes.
    async fn fetch(&self, uri: &str) -> Result<Zeroizing<Vec<u8>>, String>;
}
