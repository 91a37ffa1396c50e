//! CoCo initdata: a TOML document (`version`, `algorithm`, `[data]`) whose
//! digest over its exact bytes is bound into the TEE evidence.

use kbs_types::HashAlgorithm;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Why initdata was rejected.
#[derive(Debug, thiserror::Error)]
pub enum InitDataError {
    /// Not valid initdata TOML.
    #[error("initdata is not valid TOML with version, algorithm and [data]: {0}")]
    Parse(String),
    /// The algorithm is not one of sha256, sha384, sha512.
    #[error("initdata algorithm '{0}' is not supported: use sha256, sha384 or sha512")]
    Algorithm(String),
    /// The payload format is not `toml`.
    #[error("init-data format '{0}' is not supported: use \"toml\"")]
    Format(String),
}

#[derive(Deserialize)]
struct Raw {
    version: String,
    algorithm: String,
    #[serde(default)]
    data: BTreeMap<String, String>,
}

/// Parsed initdata.
#[derive(Debug, Clone)]
pub struct InitData {
    /// Declared version (not checked, as in CoCo).
    pub version: String,
    /// Digest algorithm.
    pub algorithm: HashAlgorithm,
    /// `[data]` entries: `aa.toml`, `cdh.toml`, `policy.rego`, ...
    pub data: BTreeMap<String, String>,
    /// Digest of the exact document bytes.
    pub digest: Vec<u8>,
}

impl InitData {
    /// Parses the document and digests its exact bytes.
    pub fn parse(text: &str) -> Result<Self, InitDataError> {
        let raw: Raw = toml::from_str(text).map_err(|e| InitDataError::Parse(e.to_string()))?;
        let algorithm = match raw.algorithm.as_str() {
            "sha256" => HashAlgorithm::Sha256,
            "sha384" => HashAlgorithm::Sha384,
            "sha512" => HashAlgorithm::Sha512,
            other => return Err(InitDataError::Algorithm(other.to_string())),
        };
        Ok(Self {
            version: raw.version,
            algorithm,
            data: raw.data,
            digest: algorithm.digest(text.as_bytes()),
        })
    }

    /// Parses the `init-data` member of an Attestation.
    pub fn from_payload(format: &str, body: &str) -> Result<Self, InitDataError> {
        if format != "toml" {
            return Err(InitDataError::Format(format.to_string()));
        }
        Self::parse(body)
    }

    /// The claims CoCo's AS derives: `aa.toml`/`cdh.toml` as JSON, and
    /// `policy.rego` replaced by `agent_policy_claims` (the JSON after
    /// `policy_data := `, when present).
    pub fn claims(&self) -> Value {
        let mut out = Map::new();
        for (k, v) in &self.data {
            if k == "policy.rego" {
                if let Some(pd) = agent_policy_data(v) {
                    out.insert("agent_policy_claims".into(), pd);
                }
                continue;
            }
            let value = if k.ends_with(".toml") {
                toml::from_str::<toml::Value>(v)
                    .ok()
                    .and_then(|t| serde_json::to_value(t).ok())
                    .unwrap_or_else(|| Value::String(v.clone()))
            } else {
                Value::String(v.clone())
            };
            out.insert(k.clone(), value);
        }
        Value::Object(out)
    }
}

/// Magic at the start of the initdata disk a VM is given.
pub const DISK_MAGIC: &[u8; 8] = b"initdata";
/// Sector size the disk is padded to.
const SECTOR: usize = 512;
/// Largest initdata document a disk may carry (compressed or not).
pub const DISK_MAX: usize = 1 << 20;

/// Why an initdata disk could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiskError {
    /// No `initdata` magic: not an initdata disk.
    #[error("not an initdata disk (no 'initdata' magic)")]
    NoMagic,
    /// The length field points past the disk or over the limit.
    #[error("initdata disk length {0} is out of range")]
    Length(u64),
    /// The payload is not gzip of UTF-8 text within the limit.
    #[error("initdata disk payload is not gzipped UTF-8 of at most {DISK_MAX} bytes")]
    Payload,
}

/// The disk image a VM gets its initdata on (Kata's layout): the magic
/// `initdata`, the gzipped document's length as u64 little-endian, the
/// gzipped document, zeros up to a whole number of 512-byte sectors.
pub fn disk_image(toml: &str) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = gz.write_all(toml.as_bytes());
    let body = gz.finish().unwrap_or_default();
    let mut out = Vec::with_capacity(16 + body.len() + SECTOR);
    out.extend_from_slice(DISK_MAGIC);
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    out.resize(out.len().div_ceil(SECTOR) * SECTOR, 0);
    out
}

/// The document on an initdata disk (the exact bytes whose digest is bound).
pub fn from_disk(disk: &[u8]) -> Result<String, DiskError> {
    use std::io::Read;
    if disk.get(..8) != Some(&DISK_MAGIC[..]) {
        return Err(DiskError::NoMagic);
    }
    let len = disk
        .get(8..16)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or(DiskError::Length(0))?;
    let body = usize::try_from(len)
        .ok()
        .filter(|l| *l <= DISK_MAX)
        .and_then(|l| disk.get(16..16 + l))
        .ok_or(DiskError::Length(len))?;
    let mut text = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(DISK_MAX as u64 + 1)
        .read_to_end(&mut text)
        .map_err(|_| DiskError::Payload)?;
    if text.len() > DISK_MAX {
        return Err(DiskError::Payload);
    }
    String::from_utf8(text).map_err(|_| DiskError::Payload)
}

fn agent_policy_data(rego: &str) -> Option<Value> {
    let start = rego.find("policy_data := ")? + "policy_data := ".len();
    let mut de = serde_json::Deserializer::from_str(&rego[start..]).into_iter::<Value>();
    de.next()?.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"aa.toml\" = '''\n[token_configs.kbs]\nurl = \"http://10.0.2.2:8080\"\n'''\n\"cdh.toml\" = '''\n[kbc]\nname = \"cc_kbc\"\nurl = \"http://10.0.2.2:8080\"\n'''\n";

    #[test]
    fn digest_matches_the_published_value() {
        assert_eq!(DOC.len(), 188);
        let d = InitData::parse(DOC).unwrap();
        assert_eq!(
            hex::encode(&d.digest),
            "6d524a30eb1c595b53729326eeffb2583b299c50bdb367dc4435a90a26bbc207"
        );
        let c = d.claims();
        assert_eq!(
            c["aa.toml"]["token_configs"]["kbs"]["url"],
            "http://10.0.2.2:8080"
        );
        assert_eq!(c["cdh.toml"]["kbc"]["name"], "cc_kbc");
    }

    /// The disk layout worked out by hand, and its reader's refusals.
    #[test]
    fn initdata_disk_round_trip() {
        let disk = disk_image(DOC);
        assert_eq!(&disk[..8], b"initdata");
        let len = u64::from_le_bytes(disk[8..16].try_into().unwrap()) as usize;
        assert_eq!(&disk[16..18], &[0x1f, 0x8b], "gzip member");
        assert_eq!(disk.len() % 512, 0);
        assert!(disk[16 + len..].iter().all(|b| *b == 0));
        assert_eq!(from_disk(&disk).unwrap(), DOC);
        assert_eq!(from_disk(&[0u8; 512]), Err(DiskError::NoMagic));
        let mut long = disk.clone();
        long[8..16].copy_from_slice(&(disk.len() as u64).to_le_bytes());
        assert_eq!(from_disk(&long), Err(DiskError::Length(disk.len() as u64)));
        // A flipped bit in the gzip trailer (CRC-32) is caught.
        let mut bad = disk.clone();
        bad[16 + len - 6] ^= 0x01;
        assert_eq!(from_disk(&bad), Err(DiskError::Payload));
        assert_eq!(from_disk(&disk[..12]), Err(DiskError::Length(0)));
    }

    #[test]
    fn rejects_bad_documents() {
        assert!(matches!(
            InitData::parse("version=\"0.1.0\"\nalgorithm=\"sha-256\"\n"),
            Err(InitDataError::Algorithm(_))
        ));
        assert!(matches!(
            InitData::parse("nope"),
            Err(InitDataError::Parse(_))
        ));
        assert!(matches!(
            InitData::from_payload("json", DOC),
            Err(InitDataError::Format(_))
        ));
    }

    #[test]
    fn extracts_agent_policy_data() {
        let doc = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"policy.rego\" = '''\npackage agent_policy\npolicy_data := {\"a\": [1]}\ndefault x := true\n'''\n";
        let d = InitData::parse(doc).unwrap();
        assert_eq!(d.digest.len(), 48);
        assert_eq!(d.claims()["agent_policy_claims"]["a"][0], 1);
    }
}
