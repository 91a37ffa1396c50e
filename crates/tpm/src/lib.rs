//! TPM 2.0 for attestation, spoken directly (no TSS libraries, so guest
//! binaries link statically): typed parsers for the structures a quote is
//! made of ([`structs`]), quote verification ([`quote`]), and a small client
//! for the commands an attester needs ([`device`]).

pub mod credential;
pub mod device;
pub mod quote;
pub mod structs;
pub mod swtpm;
pub mod wire;

pub use device::{DEFAULT_AK_HANDLE, DEFAULT_EK_HANDLE, Quote, Tcti, Tpm};
pub use quote::{AkPublicKey, VerifiedQuote, extend_sha256, verify_quote, verify_quote_signature};
pub use structs::{Attest, KeyAlgorithm, Public, Signature};

/// TPM errors.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    /// Bytes do not form the named structure.
    #[error("malformed {what}: {detail}")]
    Parse {
        /// Structure name.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The TPM refused a command.
    #[error("{command} failed with TPM response code {text}")]
    Response {
        /// Command name.
        command: &'static str,
        /// Raw response code.
        rc: u32,
        /// Readable meaning.
        text: String,
    },
    /// Talking to the TPM failed.
    #[error("{0}")]
    Io(String),
    /// A TCTI string or argument is wrong.
    #[error("{0}")]
    Tcti(String),
    /// No AK at the handle.
    #[error("no attestation key at persistent handle 0x{0:08x}: run `cocoon tpm enroll` first")]
    NoAk(u32),
    /// The quote signature does not verify with the AK.
    #[error("quote signature does not verify with the attestation key")]
    BadSignature,
    /// The AK type and the signature type differ.
    #[error("signature algorithm does not match the attestation key type")]
    KeySignatureMismatch,
    /// An algorithm this implementation does not accept.
    #[error("unsupported algorithm: {0}")]
    UnsupportedAlgorithm(String),
    /// The quote does not cover the expected PCRs.
    #[error("PCR selection: {0}")]
    PcrSelection(String),
    /// The supplied PCR values do not hash to the quoted digest.
    #[error("the supplied PCR values do not match the PCR digest signed in the quote")]
    PcrDigestMismatch,
}
