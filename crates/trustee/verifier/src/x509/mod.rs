//! X.509 for every TEE: certificates parsed for the fields the verifiers
//! read ([`X509Cert`]), and certificate path validation through
//! rustls-webpki ([`verify_path`]): the AMD chain (ARK → ASK/ASVK →
//! VCEK/VLEK), Intel's (SGX Root CA → Platform/Processor CA → PCK, and the
//! TCB signing certificate) with the DCAP CRLs, and TPM endorsement key
//! certificates up to the manufacturer CAs the trustee was given.

mod cert;
mod path;

pub(crate) use cert::tlv;
pub use cert::{X509Cert, pem_ders};
pub use path::{ChainError, Crl, Purpose, TrustAnchors, ValidPath, verify_path};

#[cfg(test)]
pub(crate) mod tests;
