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
    /// Create (or load) the EK and a persistent attestation key; write the AK public key.
    Enroll {
        #[command(flatten)]
        tpm: TpmSelect,
        /// Where to write the AK public key (PEM).
        #[arg(long)]
        out: PathBuf,
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
            let pem = pem_public_key(&der)?;
            std::fs::write(&out, pem).with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!(
                "EK at 0x{DEFAULT_EK_HANDLE:08x} ({}), AK at 0x{ak_handle:08x} ({}), fingerprint {}",
                if ek_new { "created" } else { "existing" },
                if ak_new { "created" } else { "existing" },
                hex::encode(Sha256::digest(&der))
            );
            eprintln!(
                "AK public key written to {}: trust it with `cocoon admin add-tpm-ak --file {}`",
                out.display(),
                out.display()
            );
        }
        TpmCommand::Pcrs { tpm } => {
            let mut t = Tpm::open(&tpm.tcti()?)?;
            let pcrs = t.pcr_read_sha256()?;
            let map: serde_json::Map<String, serde_json::Value> = pcrs
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("tpm_pcr{i}"), hex::encode(p).into()))
                .collect();
            println!("{}", serde_json::to_string_pretty(&map)?);
        }
        TpmCommand::Extend { tpm, pcr, data } => {
            if pcr > 23 {
                bail!("--pcr must be 0-23");
            }
            let mut t = Tpm::open(&tpm.tcti()?)?;
            let d: [u8; 32] = Sha256::digest(data.as_bytes()).into();
            t.pcr_extend_sha256(pcr, &d)?;
            let now = t.pcr_read_sha256()?;
            println!("{}", hex::encode(now[pcr as usize]));
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
