//! `cocoon secret`: create sealed secrets (CoCo's `sealed.…` format) that a
//! guest's data hub unseals after attestation.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use cocoon_types::sealed::{SEALED_VERSION, SecretContent, envelope_encrypt, seal};
use p256::ecdsa::SigningKey;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use serde_json::Map;
use std::path::PathBuf;

/// `cocoon secret`.
#[derive(Subcommand, Debug)]
pub enum SecretCommand {
    /// Create a P-256 signing key for sealed secrets and its public JWK
    /// (store the JWK in the trustee under the key id you will use).
    Keygen {
        /// Private key output (PKCS#8 PEM, mode 0600).
        #[arg(long)]
        out: PathBuf,
        /// Public JWK output.
        #[arg(long)]
        jwk_out: PathBuf,
    },
    /// Print a sealed secret.
    Seal(SealArgs),
}

/// `cocoon secret seal`.
#[derive(Args, Debug)]
pub struct SealArgs {
    /// Signing key from `cocoon secret keygen`.
    #[arg(long)]
    signing_key: PathBuf,
    /// Key id the data hub verifies with: kbs:///… URI of the public JWK.
    #[arg(long)]
    kid: String,
    #[command(subcommand)]
    kind: SealKind,
}

#[derive(Subcommand, Debug)]
enum SealKind {
    /// The plaintext is the KBS resource NAME, fetched by the guest.
    Vault {
        /// kbs:///repo/type/tag of the secret.
        #[arg(long)]
        name: String,
    },
    /// The plaintext travels encrypted, its data key wrapped by a KBS-held key.
    Envelope {
        /// kbs:///… of the 32-byte key-encryption key (stored in the trustee).
        #[arg(long)]
        key_id: String,
        /// The same 32-byte key, locally.
        #[arg(long)]
        kek_file: PathBuf,
        /// Plaintext file.
        #[arg(long)]
        file: PathBuf,
    },
}

fn check_uri(u: &str) -> Result<()> {
    cocoon_types::resource::ResourceUri::parse(u)?;
    Ok(())
}

/// Runs one `cocoon secret` command.
pub fn run(cmd: SecretCommand) -> Result<()> {
    match cmd {
        SecretCommand::Keygen { out, jwk_out } => {
            let sk = SigningKey::random(&mut rand_core::OsRng);
            let pem = sk.to_pkcs8_pem(LineEnding::LF)?;
            cocoon_store::write_private_file(&out, pem.as_bytes())
                .with_context(|| format!("cannot write {}", out.display()))?;
            let jwk = p256::PublicKey::from(sk.verifying_key()).to_jwk_string();
            std::fs::write(&jwk_out, &jwk)
                .with_context(|| format!("cannot write {}", jwk_out.display()))?;
            eprintln!(
                "signing key {} and public JWK {}: store the JWK with `cocoon admin set-resource <kid> --file {}`",
                out.display(),
                jwk_out.display(),
                jwk_out.display()
            );
        }
        SecretCommand::Seal(a) => {
            check_uri(&a.kid).context("--kid must be a kbs:/// URI")?;
            let pem = zeroize::Zeroizing::new(
                std::fs::read_to_string(&a.signing_key)
                    .with_context(|| format!("cannot read {}", a.signing_key.display()))?,
            );
            let sk = SigningKey::from_pkcs8_pem(&pem)
                .context("--signing-key is not a P-256 PKCS#8 PEM key")?;
            let content = match a.kind {
                SealKind::Vault { name } => {
                    check_uri(&name).context("--name must be a kbs:/// URI")?;
                    SecretContent::Vault {
                        version: SEALED_VERSION.into(),
                        name,
                        provider: "kbs".into(),
                        provider_settings: Map::new(),
                        annotations: Map::new(),
                    }
                }
                SealKind::Envelope {
                    key_id,
                    kek_file,
                    file,
                } => {
                    check_uri(&key_id).context("--key-id must be a kbs:/// URI")?;
                    let kek = zeroize::Zeroizing::new(
                        std::fs::read(&kek_file)
                            .with_context(|| format!("cannot read {}", kek_file.display()))?,
                    );
                    if kek.len() != 32 {
                        bail!(
                            "--kek-file must hold exactly 32 bytes, it has {}",
                            kek.len()
                        );
                    }
                    let plain = zeroize::Zeroizing::new(
                        std::fs::read(&file)
                            .with_context(|| format!("cannot read {}", file.display()))?,
                    );
                    envelope_encrypt(&plain, &kek, &key_id)?
                }
            };
            outln!("{}", seal(&content, &sk, &a.kid)?);
        }
    }
    Ok(())
}
