//! `cocoon tpm`: prepare a TPM (or swtpm) for attestation.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use cocoon_tpm::{DEFAULT_EK_HANDLE, KeyAlgorithm, Tcti, Tpm};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

/// Which TPM.
#[derive(Args, Debug, Clone)]
pub struct TpmSelect {
    /// TCTI: device:/dev/tpmrm0 or swtpm:host=H,port=P.
    #[arg(long = "tpm", env = "COCOON_TPM", default_value = "device:/dev/tpmrm0")]
    pub tcti: String,
}

impl TpmSelect {
    /// The parsed TCTI.
    pub fn tcti(&self) -> Result<Tcti> {
        Ok(self.tcti.parse()?)
    }
}

/// AK key type.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum AkAlg {
    /// RSA 2048 with RSASSA-SHA256 (what stock CoCo verifiers accept).
    Rsa,
    /// ECC P-256 with ECDSA-SHA256.
    Ecc,
}

/// `cocoon tpm`.
#[derive(Subcommand, Debug)]
pub enum TpmCommand {
    /// Create (or load) the EK and a persistent attestation key; write the
    /// AK public key for an admin (--out), and/or enroll it with the trustee
    /// by EK certificate and credential activation (--ek-enroll).
    Enroll {
        #[command(flatten)]
        tpm: TpmSelect,
        /// Where to write the AK public key (PEM).
        #[arg(long, required_unless_present = "ek_enroll")]
        out: Option<PathBuf>,
        /// Enroll the AK with the trustee at --url: it checks the TPM's EK
        /// certificate (NV 0x01c00002) against its TPM manufacturer CAs and
        /// the TPM proves the AK is its own (TPM2_ActivateCredential).
        #[arg(long)]
        ek_enroll: bool,
        #[command(flatten)]
        conn: crate::client::Connection,
        /// Persistent handle of the AK.
        #[arg(long, default_value = "0x81010002", value_parser = parse_handle)]
        ak_handle: u32,
        /// AK key type.
        #[arg(long, value_enum, default_value = "rsa")]
        alg: AkAlg,
    },
    /// Print the SHA-256 PCR values as reference values (JSON: tpm_pcrN -> hex).
    Pcrs {
        #[command(flatten)]
        tpm: TpmSelect,
    },
    /// Create (on first use) the local CA that certifies the vTPM of each
    /// pod VM `cocoon run` starts, and print the directory of its
    /// certificates: give it to the trustee (`--tpm-ek-ca DIR`; or
    /// `--tpm-hardware-ek-ca DIR`, which declares this host's software TPMs
    /// as good as hardware: only for a host you trust) so the pods enroll
    /// their attestation keys by credential activation.
    VtpmCa {
        /// The CA directory (holds its private keys; default: as `cocoon run`).
        #[arg(long, env = "COCOON_VTPM_CA", value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Extend a SHA-256 PCR with the SHA-256 of DATA (as a boot component would).
    Extend {
        #[command(flatten)]
        tpm: TpmSelect,
        /// PCR index (0-23).
        #[arg(long)]
        pcr: u32,
        /// Data whose SHA-256 is extended.
        data: String,
    },
}

/// Enrolls the AK at `ak_handle` by EK certificate: asks the trustee for a
/// credential bound to the AK, activates it in the TPM, sends the secret
/// back. Returns the CA the trustee anchored the EK in (`None` when an
/// admin had already added the AK, whose record the trustee keeps).
fn ek_enroll_ak(
    t: &mut Tpm,
    ak_handle: u32,
    conn: &crate::client::Connection,
) -> Result<Option<String>> {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;
    let cert = t
        .nv_read(cocoon_tpm::swtpm::EK_CERT_NV_INDEX)
        .context("this TPM has no RSA EK certificate in NV 0x01c00002: an admin must trust the AK instead (`--out ak.pem`, then `cocoon admin add-tpm-ak`)")?;
    let ak_public = t
        .read_public_bytes(ak_handle)?
        .context("the AK is not loaded")?;
    let http = conn.http()?;
    let rt = tokio::runtime::Handle::current();
    let post = |path: &str, body: serde_json::Value, what: &'static str| {
        let req = http.post(conn.kbs(path)).json(&body);
        rt.block_on(async move {
            let resp = req
                .send()
                .await
                .with_context(|| format!("cannot reach the trustee at {}", conn.url))?;
            crate::client::check(resp, what)
                .await?
                .json::<serde_json::Value>()
                .await
                .context("the trustee's answer is not JSON")
        })
    };
    let ch = post(
        "/tpm/ek-challenge",
        serde_json::json!({"ek_cert": B64.encode(&cert), "ak_public": B64.encode(&ak_public)}),
        "EK challenge",
    )?;
    let field = |k: &str| -> Result<Vec<u8>> {
        B64.decode(ch[k].as_str().unwrap_or_default())
            .with_context(|| format!("the trustee's {k} is not base64"))
    };
    let secret = zeroize::Zeroizing::new(t.activate_credential(
        ak_handle,
        DEFAULT_EK_HANDLE,
        &field("id_object")?,
        &field("encrypted_secret")?,
    )?);
    let done = post(
        "/tpm/ek-activate",
        serde_json::json!({"challenge_id": ch["challenge_id"], "secret": B64.encode(&*secret)}),
        "EK activation",
    )?;
    Ok(done["enrolled_by_ek_of"].as_str().map(str::to_string))
}

fn parse_handle(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|_| format!("'{s}' is not a hex handle such as 0x81010002"))
}

/// Runs one `cocoon tpm` command (blocking TPM I/O).
pub fn run(cmd: TpmCommand) -> Result<()> {
    match cmd {
        TpmCommand::Enroll {
            tpm,
            out,
            ek_enroll,
            conn,
            ak_handle,
            alg,
        } => {
            let tcti = tpm.tcti()?;
            let mut t = Tpm::open(&tcti)?;
            t.startup()?;
            let (_, ek_new) = t.ensure_ek(DEFAULT_EK_HANDLE)?;
            let alg = match alg {
                AkAlg::Rsa => KeyAlgorithm::Rsa2048,
                AkAlg::Ecc => KeyAlgorithm::EccP256,
            };
            let (ak, ak_new) = t.ensure_ak(ak_handle, alg)?;
            let der = ak.to_spki_der()?;
            eprintln!(
                "EK at 0x{DEFAULT_EK_HANDLE:08x} ({}), AK at 0x{ak_handle:08x} ({}), fingerprint {}",
                if ek_new { "created" } else { "existing" },
                if ak_new { "created" } else { "existing" },
                hex::encode(Sha256::digest(&der))
            );
            if let Some(out) = &out {
                let pem = pem_public_key(&der)?;
                std::fs::write(out, pem)
                    .with_context(|| format!("cannot write {}", out.display()))?;
                eprintln!(
                    "AK public key written to {}: trust it with `cocoon admin add-tpm-ak --file {}`",
                    out.display(),
                    out.display()
                );
            }
            if ek_enroll {
                match ek_enroll_ak(&mut t, ak_handle, &conn)? {
                    Some(ca) => eprintln!(
                        "AK enrolled with {} by credential activation (EK certificate issued under {ca})",
                        conn.url
                    ),
                    None => eprintln!(
                        "AK proven to be this TPM's by credential activation; {} already trusted it (added by an admin)",
                        conn.url
                    ),
                }
            }
        }
        TpmCommand::VtpmCa { dir } => {
            let dir = dir.unwrap_or_else(crate::run::default_vtpm_ca);
            let certs = cocoon_tpm::swtpm::ca_certs_dir(&dir);
            if !certs.join("root.pem").is_file() {
                // The CA is made when it first certifies a TPM.
                let scratch = tempfile::tempdir().context("creating a scratch directory")?;
                cocoon_tpm::swtpm::manufacture_with_ek_cert(scratch.path(), &dir)
                    .with_context(|| format!("creating the vTPM CA in {}", dir.display()))?;
                eprintln!("vTPM CA created in {}", dir.display());
            }
            outln!("{}", certs.display());
        }
        TpmCommand::Pcrs { tpm } => {
            let mut t = Tpm::open(&tpm.tcti()?)?;
            let pcrs = t.pcr_read_sha256()?;
            let map: serde_json::Map<String, serde_json::Value> = pcrs
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("tpm_pcr{i}"), hex::encode(p).into()))
                .collect();
            outln!("{}", serde_json::to_string_pretty(&map)?);
        }
        TpmCommand::Extend { tpm, pcr, data } => {
            if pcr > 23 {
                bail!("--pcr must be 0-23");
            }
            let mut t = Tpm::open(&tpm.tcti()?)?;
            let d: [u8; 32] = Sha256::digest(data.as_bytes()).into();
            t.pcr_extend_sha256(pcr, &d)?;
            let now = t.pcr_read_sha256()?;
            outln!("{}", hex::encode(now[pcr as usize]));
        }
    }
    Ok(())
}

/// PEM `PUBLIC KEY` text for DER SPKI.
fn pem_public_key(der: &[u8]) -> Result<String> {
    use p256::pkcs8::der::Document;
    use p256::pkcs8::der::pem::LineEnding;
    Ok(Document::try_from(der)?.to_pem("PUBLIC KEY", LineEnding::LF)?)
}
