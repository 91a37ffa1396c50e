//! The trustee's data directory: where each file lives, and the keys made
//! there on first start (admin key pair, self-signed TLS certificate).

use crate::admin::AdminSigningKey;
use crate::server::{StartError, err};
use cocoon_store::{create_file_exclusive, create_private_file, replace_file};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Paths inside the data directory.
pub struct DataPaths {
    /// SQLite database.
    pub db: PathBuf,
    /// Key-encryption key.
    pub kek: PathBuf,
    /// Admin private key (created on first start when no admin key is given).
    pub admin_key: PathBuf,
    /// Admin public key.
    pub admin_pub: PathBuf,
    /// TLS certificate.
    pub tls_cert: PathBuf,
    /// TLS key.
    pub tls_key: PathBuf,
    /// The audit log's signing key (Ed25519, PKCS#8 PEM) and its public half.
    pub audit_key: PathBuf,
    pub audit_pub: PathBuf,
}

impl DataPaths {
    /// Paths under `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            db: dir.join("trustee.db"),
            kek: dir.join("kek.key"),
            admin_key: dir.join("admin-key.pem"),
            admin_pub: dir.join("admin-key.pub.pem"),
            tls_cert: dir.join("tls").join("cert.pem"),
            tls_key: dir.join("tls").join("key.pem"),
            audit_key: dir.join("audit-key.pem"),
            audit_pub: dir.join("audit-key.pub.pem"),
        }
    }
}

pub(crate) fn file_err(path: &Path, e: impl std::fmt::Display) -> StartError {
    err(format!("{}: {e}", path.display()))
}

/// The audit log's signing key: `path` when given (replicas that do not
/// share a data directory share this file), else the data directory's,
/// created exclusively on first start with its public half beside it.
pub(crate) fn audit_key(
    paths: &DataPaths,
    given: Option<&Path>,
) -> Result<ed25519_dalek::SigningKey, StartError> {
    let path = given.unwrap_or(&paths.audit_key);
    if given.is_none() && !path.exists() {
        let fresh = AdminSigningKey::generate_ed25519();
        create_private_file(path, fresh.to_pkcs8_pem().as_bytes())
            .map_err(|e| file_err(path, e))?;
    }
    let key = match AdminSigningKey::from_file(path).map_err(|e| file_err(path, e))? {
        AdminSigningKey::Ed25519(k) => k,
        AdminSigningKey::P256(_) => {
            return Err(file_err(path, "the audit key must be Ed25519"));
        }
    };
    if given.is_none() && !paths.audit_pub.exists() {
        let public = AdminSigningKey::Ed25519(key.clone()).public_key();
        let _ = create_file_exclusive(&paths.audit_pub, public.to_pem().as_bytes(), 0o644);
    }
    Ok(key)
}

/// Makes sure the data directory holds an admin key pair. A private key
/// already there is kept, whatever its format (an owner may put an OpenSSL
/// key there), and its public half written if missing; otherwise a new
/// Ed25519 key is created exclusively, so racing replicas agree on one.
pub(crate) fn ensure_admin_key(paths: &DataPaths) -> Result<(), StartError> {
    if paths.admin_pub.exists() {
        return Ok(());
    }
    let fresh = AdminSigningKey::generate_ed25519();
    let created = create_private_file(&paths.admin_key, fresh.to_pkcs8_pem().as_bytes())
        .map_err(|e| file_err(&paths.admin_key, e))?;
    let public = if created {
        fresh.public_key()
    } else {
        AdminSigningKey::from_file(&paths.admin_key)
            .map_err(|e| file_err(&paths.admin_key, e))?
            .public_key()
    };
    create_file_exclusive(&paths.admin_pub, public.to_pem().as_bytes(), 0o644)
        .map_err(|e| file_err(&paths.admin_pub, e))?;
    Ok(())
}

/// Makes sure the data directory holds a self-signed certificate and its
/// key. The key is created exclusively; a certificate is made for whichever
/// key won (a fresh key always gets a fresh certificate).
pub(crate) fn ensure_self_signed(
    paths: &DataPaths,
    listen: &SocketAddr,
    extra_names: &[String],
) -> Result<(), StartError> {
    if paths.tls_cert.exists() && paths.tls_key.exists() {
        return Ok(());
    }
    let fresh = rcgen::KeyPair::generate().map_err(err)?;
    let created = create_private_file(
        &paths.tls_key,
        zeroize::Zeroizing::new(fresh.serialize_pem()).as_bytes(),
    )
    .map_err(|e| file_err(&paths.tls_key, e))?;
    let key = if created {
        fresh
    } else {
        let pem = zeroize::Zeroizing::new(
            std::fs::read_to_string(&paths.tls_key).map_err(|e| file_err(&paths.tls_key, e))?,
        );
        rcgen::KeyPair::from_pem(&pem).map_err(|e| file_err(&paths.tls_key, e))?
    };
    if !created && paths.tls_cert.exists() {
        return Ok(());
    }
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    names.extend(extra_names.iter().cloned());
    let cert = rcgen::CertificateParams::new(names)
        .and_then(|p| p.self_signed(&key))
        .map_err(err)?;
    replace_file(&paths.tls_cert, cert.pem().as_bytes(), 0o644)
        .map_err(|e| file_err(&paths.tls_cert, e))?;
    Ok(())
}

/// The directory `path` is in, resolved (symlinks, `..`).
fn directory_of(path: &Path) -> Option<PathBuf> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    dir.canonicalize().ok()
}

/// Warns once when the key-encryption key sits next to the database it
/// protects: then one copy of that directory is enough to read every secret.
pub(crate) fn warn_if_kek_beside_db(kek: &Path, db: &Path) {
    if let (Some(k), Some(d)) = (directory_of(kek), directory_of(db))
        && k == d
    {
        tracing::warn!(
            kek = %kek.display(),
            db = %db.display(),
            "the key-encryption key is in the same directory as the database it protects: a copy of that directory (a backup, a snapshot) holds both the lock and the key. Keep the key on another volume with --kek-file, or in an HSM with --kek pkcs11:..."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::AdminKey;

    #[test]
    fn an_admin_key_already_in_the_data_directory_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let paths = DataPaths::new(dir.path());
        let owner_key = include_str!("admin/testdata/p256-sec1.pem");
        std::fs::write(&paths.admin_key, owner_key).unwrap();
        ensure_admin_key(&paths).unwrap();
        assert_eq!(
            std::fs::read_to_string(&paths.admin_key).unwrap(),
            owner_key
        );
        assert_eq!(
            std::fs::read_to_string(&paths.admin_pub).unwrap().trim(),
            include_str!("admin/testdata/p256-sec1.pub.pem").trim()
        );
    }

    #[test]
    fn a_new_admin_key_is_pkcs8_v1_mode_0600_and_matches_its_public_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let paths = DataPaths::new(dir.path());
        ensure_admin_key(&paths).unwrap();
        let mode = std::fs::metadata(&paths.admin_key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let key = AdminSigningKey::from_file(&paths.admin_key).unwrap();
        let public = AdminKey::from_file(&paths.admin_pub).unwrap();
        assert_eq!(key.public_key().to_pem(), public.to_pem());
        // PKCS#8 v1: the DER's version INTEGER is 0 (v2 is 1) and the key
        // ends after the 34-byte private key OCTET STRING.
        let pem = std::fs::read_to_string(&paths.admin_key).unwrap();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        use base64::Engine;
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(der.len(), 48);
        assert_eq!(&der[2..5], &[0x02, 0x01, 0x00]);
    }

    #[test]
    fn a_racing_self_signed_setup_keeps_one_key_and_a_matching_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let paths = DataPaths::new(dir.path());
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        // Another replica created the key but has not written its certificate.
        let other = rcgen::KeyPair::generate().unwrap();
        create_private_file(&paths.tls_key, other.serialize_pem().as_bytes()).unwrap();
        ensure_self_signed(&paths, &listen, &["trustee.coco.svc".to_string()]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&paths.tls_key).unwrap(),
            other.serialize_pem()
        );
        let cert = std::fs::read_to_string(&paths.tls_cert).unwrap();
        use rustls::pki_types::pem::PemObject;
        let parsed = rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        assert!(
            parsed
                .windows(other.public_key_raw().len())
                .any(|w| w == other.public_key_raw()),
            "certificate must be for the existing key"
        );
        // The extra name is among the certificate's (a DER IA5String).
        assert!(
            parsed.windows(16).any(|w| w == b"trustee.coco.svc"),
            "the --tls-san name is not in the certificate"
        );
    }
}
