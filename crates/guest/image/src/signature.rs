//! Signature policy in the containers-policy.json format (what skopeo,
//! podman and CoCo's image-rs read) and cosign key-based signatures
//! (`sha256-<hex>.sig` tags, simple-signing payloads).
//!
//! Requirement types: `insecureAcceptAnything`, `reject`, `sigstoreSigned`
//! (cosign, P-256 keys). `signedBy` (GPG simple signing) is recognized and
//! refused with a clear message. Key paths may be `kbs:///…` resource URIs.

use crate::ResourceFetcher;
use crate::reference::Reference;
use crate::registry::{RegistryClient, RegistryError};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::DecodePublicKey;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

/// Media type of a cosign simple-signing payload layer.
pub const COSIGN_PAYLOAD_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Annotation carrying the base64 signature over the payload.
pub const COSIGN_SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const COSIGN_TYPE: &str = "cosign container image signature";

/// Why an image was refused or the policy could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy file is invalid.
    #[error("invalid signature policy: {0}")]
    Invalid(String),
    /// The policy refuses the image; the message says which rule and why.
    #[error("image {image} refused by the signature policy (scope {scope:?}): {reason}")]
    Refused {
        /// The image.
        image: String,
        /// The policy scope that applied.
        scope: String,
        /// Why.
        reason: String,
    },
    /// A registry failure while looking for signatures.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// One requirement.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type")]
pub enum Requirement {
    /// Accept without checks.
    #[serde(rename = "insecureAcceptAnything")]
    InsecureAcceptAnything,
    /// Refuse.
    #[serde(rename = "reject")]
    Reject,
    /// A cosign signature by this key.
    #[serde(rename = "sigstoreSigned", rename_all = "camelCase")]
    SigstoreSigned {
        /// PEM public key file, or `kbs:///…`.
        #[serde(default)]
        key_path: Option<String>,
        /// Base64 of the PEM public key.
        #[serde(default)]
        key_data: Option<String>,
        /// Which identity the signature must claim.
        #[serde(default)]
        signed_identity: Option<SignedIdentity>,
    },
    /// GPG simple signing (recognized, not supported).
    #[serde(rename = "signedBy", rename_all = "camelCase")]
    SignedBy {
        /// Always `GPGKeys`.
        #[serde(default)]
        key_type: Option<String>,
        /// Keyring path.
        #[serde(default)]
        key_path: Option<String>,
    },
}

/// `signedIdentity` rules of containers-policy.json.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type")]
pub enum SignedIdentity {
    /// Same repository; tag must match when the image is pulled by tag.
    #[serde(rename = "matchRepoDigestOrExact")]
    MatchRepoDigestOrExact,
    /// Same repository, any tag.
    #[serde(rename = "matchRepository")]
    MatchRepository,
    /// Exactly this reference.
    #[serde(rename = "exactReference", rename_all = "camelCase")]
    ExactReference {
        /// The reference.
        docker_reference: String,
    },
    /// This repository, any tag.
    #[serde(rename = "exactRepository", rename_all = "camelCase")]
    ExactRepository {
        /// The repository.
        docker_repository: String,
    },
}

/// A containers-policy.json document.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Policy {
    /// Used when no scope matches.
    pub default: Vec<Requirement>,
    /// Per transport, per scope.
    #[serde(default)]
    pub transports: HashMap<String, HashMap<String, Vec<Requirement>>>,
}

impl Policy {
    /// Parses and checks a policy document.
    pub fn parse(bytes: &[u8]) -> Result<Self, PolicyError> {
        let p: Self =
            serde_json::from_slice(bytes).map_err(|e| PolicyError::Invalid(e.to_string()))?;
        let all = std::iter::once(&p.default).chain(p.transports.values().flat_map(|t| t.values()));
        for reqs in all {
            if reqs.is_empty() {
                return Err(PolicyError::Invalid("a requirement list is empty".into()));
            }
            for r in reqs {
                if let Requirement::SigstoreSigned {
                    key_path, key_data, ..
                } = r
                    && key_path.is_some() == key_data.is_some()
                {
                    return Err(PolicyError::Invalid(
                        "sigstoreSigned needs exactly one of keyPath and keyData".into(),
                    ));
                }
            }
        }
        Ok(p)
    }

    /// The policy that accepts everything (used when none is configured).
    pub fn accept_anything() -> Self {
        Self {
            default: vec![Requirement::InsecureAcceptAnything],
            transports: HashMap::new(),
        }
    }

    /// The most specific scope for an image in the `docker` transport:
    /// reference with tag or digest, repository, each parent namespace,
    /// registry host, `*.domain` wildcards, then the transport default.
    pub fn requirements_for(&self, image: &Reference) -> (String, &[Requirement]) {
        if let Some(scopes) = self.transports.get("docker") {
            let mut candidates = vec![image.to_string()];
            let name = image.name();
            let mut ns = name.as_str();
            loop {
                candidates.push(ns.to_string());
                match ns.rfind('/') {
                    Some(i) => ns = &ns[..i],
                    None => break,
                }
            }
            let host = image.registry.split(':').next().unwrap_or_default();
            let mut dom = host;
            while let Some(i) = dom.find('.') {
                dom = &dom[i + 1..];
                candidates.push(format!("*.{dom}"));
            }
            candidates.push(String::new());
            for c in candidates {
                if let Some(r) = scopes.get(&c) {
                    return (c, r);
                }
            }
        }
        ("default".into(), &self.default)
    }
}

/// The cosign simple-signing payload.
#[derive(Debug, Deserialize)]
struct Payload {
    critical: Critical,
}

#[derive(Debug, Deserialize)]
struct Critical {
    identity: Identity,
    image: PayloadImage,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Debug, Deserialize)]
struct PayloadImage {
    #[serde(rename = "docker-manifest-digest")]
    digest: String,
}

/// The payload cosign signs for `repository` at `digest`.
pub fn cosign_payload(image: &Reference, digest: &str) -> Vec<u8> {
    json!({
        "critical": {
            "identity": {"docker-reference": image.name()},
            "image": {"docker-manifest-digest": digest},
            "type": COSIGN_TYPE,
        },
        "optional": null,
    })
    .to_string()
    .into_bytes()
}

/// Checks images against a policy, fetching signatures from the registry.
pub struct PolicyVerifier {
    policy: Policy,
    client: RegistryClient,
    fetcher: Option<Arc<dyn ResourceFetcher>>,
}

impl PolicyVerifier {
    /// A verifier; `fetcher` resolves `kbs:///` key paths.
    pub fn new(
        policy: Policy,
        client: RegistryClient,
        fetcher: Option<Arc<dyn ResourceFetcher>>,
    ) -> Self {
        Self {
            policy,
            client,
            fetcher,
        }
    }

    /// Whether the image whose top-level manifest has `digest` may be used.
    pub async fn check(&self, image: &Reference, digest: &str) -> Result<(), PolicyError> {
        let (scope, reqs) = self.policy.requirements_for(image);
        let refused = |reason: String| PolicyError::Refused {
            image: image.to_string(),
            scope: scope.clone(),
            reason,
        };
        for req in reqs {
            match req {
                Requirement::InsecureAcceptAnything => {}
                Requirement::Reject => return Err(refused("the policy rejects this scope".into())),
                Requirement::SignedBy { .. } => {
                    return Err(refused(
                        "signedBy (GPG simple signing) is not supported; sign with cosign and use sigstoreSigned".into(),
                    ));
                }
                Requirement::SigstoreSigned {
                    key_path,
                    key_data,
                    signed_identity,
                } => {
                    let pem = self
                        .key_pem(key_path.as_deref(), key_data.as_deref())
                        .await
                        .map_err(&refused)?;
                    let key = cosign_public_key(&pem).map_err(&refused)?;
                    let identity = signed_identity
                        .clone()
                        .unwrap_or(SignedIdentity::MatchRepoDigestOrExact);
                    self.verify_cosign(image, digest, &key, &identity)
                        .await
                        .map_err(|e| match e {
                            PolicyError::Refused { reason, .. } => refused(reason),
                            other => other,
                        })?;
                }
            }
        }
        Ok(())
    }

    async fn key_pem(&self, path: Option<&str>, data: Option<&str>) -> Result<Vec<u8>, String> {
        match (path, data) {
            (_, Some(d)) => B64
                .decode(d)
                .map_err(|_| "keyData is not base64".to_string()),
            (Some(p), None) if p.starts_with("kbs://") => {
                let f = self
                    .fetcher
                    .as_ref()
                    .ok_or_else(|| format!("key {p} is in the KBS, but no KBS is configured"))?;
                f.fetch(p)
                    .await
                    .map(|k| k.to_vec())
                    .map_err(|e| format!("fetching key {p}: {e}"))
            }
            (Some(p), None) => std::fs::read(p).map_err(|e| format!("reading key {p}: {e}")),
            (None, None) => Err("no key".into()),
        }
    }

    async fn verify_cosign(
        &self,
        image: &Reference,
        digest: &str,
        key: &[u8],
        identity: &SignedIdentity,
    ) -> Result<(), PolicyError> {
        let refused = |reason: String| PolicyError::Refused {
            image: image.to_string(),
            scope: String::new(),
            reason,
        };
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        let sig_ref = image.with_tag(&format!("sha256-{hex}.sig"));
        let manifest = match self.client.manifest(&sig_ref).await {
            Ok(m) => m,
            Err(RegistryError::NotFound { .. }) => {
                return Err(refused(format!(
                    "no cosign signature for {digest} (looked for tag {})",
                    sig_ref.tag.as_deref().unwrap_or_default()
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let m: oci_spec::image::ImageManifest = serde_json::from_slice(&manifest.bytes)
            .map_err(|e| refused(format!("signature manifest: {e}")))?;
        let mut reasons = Vec::new();
        for layer in m.layers() {
            if layer.media_type().to_string() != COSIGN_PAYLOAD_TYPE {
                continue;
            }
            let Some(sig) = layer
                .annotations()
                .as_ref()
                .and_then(|a| a.get(COSIGN_SIGNATURE_ANNOTATION))
            else {
                continue;
            };
            let payload = self
                .client
                .small_blob(&sig_ref, layer.digest().as_ref())
                .await?;
            match check_payload(image, digest, key, &payload, sig, identity) {
                Ok(()) => return Ok(()),
                Err(e) => reasons.push(e),
            }
        }
        if reasons.is_empty() {
            reasons.push("the signature manifest holds no cosign signature".into());
        }
        Err(refused(format!(
            "no valid signature: {}",
            reasons.join("; ")
        )))
    }
}

/// The uncompressed P-256 point of a PEM public key.
fn cosign_public_key(pem: &[u8]) -> Result<Vec<u8>, String> {
    let pem = std::str::from_utf8(pem).map_err(|_| "verification key is not PEM".to_string())?;
    let k = p256::PublicKey::from_public_key_pem(pem)
        .map_err(|_| "verification key is not a P-256 public key (PEM SPKI)".to_string())?;
    Ok(k.to_encoded_point(false).as_bytes().to_vec())
}

fn check_payload(
    image: &Reference,
    digest: &str,
    key: &[u8],
    payload: &[u8],
    sig_b64: &str,
    identity: &SignedIdentity,
) -> Result<(), String> {
    let sig = B64
        .decode(sig_b64.trim())
        .map_err(|_| "signature is not base64".to_string())?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, key)
        .verify(payload, &sig)
        .map_err(|_| "signature does not verify with the policy key".to_string())?;
    let p: Payload = serde_json::from_slice(payload).map_err(|e| format!("signed payload: {e}"))?;
    if p.critical.kind != COSIGN_TYPE {
        return Err(format!("signed payload type {:?}", p.critical.kind));
    }
    if p.critical.image.digest != digest {
        return Err(format!(
            "signature is for {}, not {digest}",
            p.critical.image.digest
        ));
    }
    let signed = p.critical.identity.docker_reference;
    let signed_name = signed.split('@').next().unwrap_or_default();
    let (signed_repo, signed_tag) = match signed_name.rfind(':') {
        Some(i) if !signed_name[i..].contains('/') => {
            (&signed_name[..i], Some(&signed_name[i + 1..]))
        }
        _ => (signed_name, None),
    };
    let ok = match identity {
        SignedIdentity::MatchRepository => signed_repo == image.name(),
        SignedIdentity::MatchRepoDigestOrExact => {
            signed_repo == image.name()
                && (image.digest.is_some()
                    || (image.tag.is_some() && signed_tag == image.tag.as_deref()))
        }
        SignedIdentity::ExactReference { docker_reference } => signed == *docker_reference,
        SignedIdentity::ExactRepository { docker_repository } => signed_repo == docker_repository,
    };
    if !ok {
        return Err(format!(
            "signed identity {signed:?} does not satisfy {identity:?} for {image} (cosign signs the repository without a tag: use signedIdentity matchRepository)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer;
    use p256::pkcs8::EncodePublicKey;

    #[test]
    fn scopes_most_specific_first() {
        let p = Policy::parse(
            br#"{"default":[{"type":"reject"}],"transports":{"docker":{
            "r.example.com:5000/team/app":[{"type":"insecureAcceptAnything"}],
            "r.example.com:5000/team":[{"type":"reject"}],
            "*.example.com":[{"type":"insecureAcceptAnything"}]}}}"#,
        )
        .unwrap();
        let scope = |s: &str| p.requirements_for(&Reference::parse(s).unwrap()).0;
        assert_eq!(
            scope("r.example.com:5000/team/app:v1"),
            "r.example.com:5000/team/app"
        );
        assert_eq!(
            scope("r.example.com:5000/team/other"),
            "r.example.com:5000/team"
        );
        assert_eq!(scope("q.example.com/x"), "*.example.com");
        assert_eq!(scope("quay.io/x"), "default");
        assert!(Policy::parse(br#"{"default":[]}"#).is_err());
        assert!(Policy::parse(br#"{"default":[{"type":"sigstoreSigned"}]}"#).is_err());
        assert!(Policy::parse(br#"{"default":[{"type":"bogus"}]}"#).is_err());
    }

    #[test]
    fn payload_checks() {
        let sk = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let pem = sk
            .verifying_key()
            .to_public_key_pem(Default::default())
            .unwrap();
        let key = cosign_public_key(pem.as_bytes()).unwrap();
        let image = Reference::parse("127.0.0.1:5000/app:v1").unwrap();
        let digest = format!("sha256:{}", "ab".repeat(32));
        let payload = cosign_payload(&image, &digest);
        let sig: p256::ecdsa::Signature = sk.sign(&payload);
        let sig = B64.encode(sig.to_der().as_bytes());
        let repo = SignedIdentity::MatchRepository;
        assert!(check_payload(&image, &digest, &key, &payload, &sig, &repo).is_ok());
        // cosign's identity has no tag, so the default rule wants a digest reference.
        let exact = SignedIdentity::MatchRepoDigestOrExact;
        assert!(check_payload(&image, &digest, &key, &payload, &sig, &exact).is_err());
        assert!(
            check_payload(
                &image.with_digest(&digest),
                &digest,
                &key,
                &payload,
                &sig,
                &exact
            )
            .is_ok()
        );
        let other = format!("sha256:{}", "cd".repeat(32));
        let e = check_payload(&image, &other, &key, &payload, &sig, &repo).unwrap_err();
        assert!(e.contains("not sha256:cd"), "{e}");
        let mut tampered = payload.clone();
        tampered[10] ^= 1;
        assert!(
            check_payload(&image, &digest, &key, &tampered, &sig, &repo)
                .unwrap_err()
                .contains("does not verify")
        );
        let wrong = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let wrong_pem = wrong
            .verifying_key()
            .to_public_key_pem(Default::default())
            .unwrap();
        let wrong_key = cosign_public_key(wrong_pem.as_bytes()).unwrap();
        assert!(check_payload(&image, &digest, &wrong_key, &payload, &sig, &repo).is_err());
    }
}
