//! After webpki refused a chain: which certificate (or CRL) its error is
//! about. webpki's errors name the check, not the certificate, so the
//! chain is followed again by issuer names here. This only words the
//! refusal; it never decides whether a chain is accepted.

use super::{ChainError, Check, Crl, TCG_KP_EK_CERTIFICATE};
use crate::x509::X509Cert;
use rustls_pki_types::CertificateDer;
use std::mem::discriminant;
use webpki::{Error as E, UnknownStatusPolicy};
use x509_cert::der::Encode;

/// Extensions webpki processes, so may be critical.
const PROCESSED: [&str; 7] = [
    "2.5.29.15",
    "2.5.29.17",
    "2.5.29.19",
    "2.5.29.30",
    "2.5.29.31",
    "2.5.29.37",
    "1.3.6.1.4.1.11129.2.4.2",
];

/// Unix seconds as RFC 3339, for messages.
pub(super) fn when(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{secs} (Unix seconds)"))
}

/// Why webpki cannot read `cert`.
pub(super) fn describe(e: &E, cert: &X509Cert) -> String {
    match e {
        E::UnsupportedCriticalExtension => {
            let unknown: Vec<String> = cert
                .extensions()
                .filter(|x| x.critical && !PROCESSED.contains(&x.extn_id.to_string().as_str()))
                .map(|x| x.extn_id.to_string())
                .collect();
            format!(
                "it has a critical extension the validator does not process ({})",
                unknown.join(", ")
            )
        }
        E::UnsupportedCertVersion => "it is not an X.509 version 3 certificate".into(),
        E::InvalidCertValidity => "its validity starts after it ends".into(),
        other => format!("its encoding is not accepted ({other:?})"),
    }
}

/// Whether `parent`'s subject is `child`'s issuer.
fn named_issuer(child: &X509Cert, parent: &X509Cert) -> bool {
    child.cert.tbs_certificate.issuer == parent.cert.tbs_certificate.subject
}

/// The content of a DER SEQUENCE (an AlgorithmIdentifier without its header).
fn content(der: &[u8]) -> Vec<u8> {
    crate::x509::tlv(der)
        .and_then(|(hdr, len)| der.get(hdr..hdr.checked_add(len)?))
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

impl Check<'_, '_> {
    /// The error for webpki's refusal `err`.
    pub(super) fn explain(&self, err: &E, crls: &[&Crl<'_>]) -> ChainError {
        let found = match err {
            E::CertExpired { .. } | E::CertNotValidYet { .. } => self
                .by_name()
                .into_iter()
                .find_map(|c| self.check_time(c).err()),
            E::UnknownIssuer => self.missing_issuer().or_else(|| self.bad_link()),
            E::InvalidSignatureForPublicKey
            | E::SignatureAlgorithmMismatch
            | E::UnsupportedSignatureAlgorithmContext(_)
            | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => self.bad_link(),
            E::CaUsedAsEndEntity => Some(ChainError::CaAsLeaf {
                cert: self.leaf.cn.clone(),
            }),
            E::EndEntityUsedAsCa => self.by_name()[1..]
                .iter()
                .find(|c| !c.is_ca().unwrap_or(false))
                .map(|c| ChainError::NotCa { cert: c.cn.clone() }),
            E::PathLenConstraintViolated => self.by_name()[1..]
                .last()
                .map(|c| ChainError::PathLength { cert: c.cn.clone() }),
            E::RequiredEkuNotFoundContext(_) | E::EmptyEkuExtension => self.wrong_purpose(),
            E::CertRevoked
            | E::CrlExpired { .. }
            | E::InvalidCrlSignatureForPublicKey
            | E::UnknownRevocationStatus
            | E::IssuerNotCrlSigner
            | E::UnsupportedCrlSignatureAlgorithmContext(_)
            | E::UnsupportedCrlSignatureAlgorithmForPublicKeyContext(_) => {
                Some(self.crl_refusal(err, crls))
            }
            _ => self.unreadable(err),
        };
        found.unwrap_or_else(|| ChainError::Other(format!("{err:?}")))
    }

    /// The leaf and the intermediates above it, each found by its issuer's
    /// name (the first not yet used), up to where an anchor or nothing is.
    fn by_name(&self) -> Vec<&X509Cert> {
        let mut chain = vec![self.leaf];
        while let Some(cur) = chain.last().copied() {
            if self.anchors.certs.iter().any(|a| named_issuer(cur, a)) {
                break;
            }
            let next = self
                .intermediates
                .iter()
                .copied()
                .find(|i| named_issuer(cur, i) && !chain.iter().any(|c| std::ptr::eq(*c, *i)));
            match next {
                Some(i) => chain.push(i),
                None => break,
            }
        }
        chain
    }

    /// The certificate whose issuer is neither an anchor nor an intermediate.
    fn missing_issuer(&self) -> Option<ChainError> {
        let top = *self.by_name().last()?;
        (!self.anchors.certs.iter().any(|a| named_issuer(top, a))).then(|| {
            ChainError::UnknownIssuer {
                cert: top.cn.clone(),
                issuer: top.issuer_name(),
            }
        })
    }

    /// The first certificate, from the leaf up, that no issuer of its name
    /// signed.
    fn bad_link(&self) -> Option<ChainError> {
        let mut cur = self.leaf;
        let mut used: Vec<&X509Cert> = Vec::new();
        for _ in 0..=self.intermediates.len() {
            let mut first_error = None;
            for anchor in self.anchors.certs.iter().filter(|a| named_issuer(cur, a)) {
                match self.link(cur, anchor) {
                    Ok(()) => return None,
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            let mut next = None;
            for i in self.intermediates.iter().copied() {
                if !named_issuer(cur, i) || used.iter().any(|u| std::ptr::eq(*u, i)) {
                    continue;
                }
                match self.link(cur, i) {
                    Ok(()) => {
                        next = Some(i);
                        break;
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            match next {
                Some(i) => {
                    used.push(i);
                    cur = i;
                }
                None => return first_error,
            }
        }
        None
    }

    /// Whether `issuer`'s key verifies `child`'s signature, with the
    /// purpose's algorithms.
    fn link(&self, child: &X509Cert, issuer: &X509Cert) -> Result<(), ChainError> {
        let signature_alg = content(&child.cert.signature_algorithm.to_der().unwrap_or_default());
        let key_alg = content(
            &issuer
                .cert
                .tbs_certificate
                .subject_public_key_info
                .algorithm
                .to_der()
                .unwrap_or_default(),
        );
        let candidates: Vec<_> = self
            .purpose
            .algorithms()
            .iter()
            .filter(|a| {
                a.signature_alg_id().as_ref() == signature_alg
                    && a.public_key_alg_id().as_ref() == key_alg
            })
            .collect();
        if candidates.is_empty() {
            return Err(ChainError::UnsupportedAlgorithm {
                cert: child.cn.clone(),
                algorithm: child.cert.signature_algorithm.oid.to_string(),
            });
        }
        let (Some(tbs), Some(signature)) = (child.tbs(), child.cert.signature.as_bytes()) else {
            return Err(ChainError::Unreadable {
                cert: child.cn.clone(),
                reason: "its signature is not readable".into(),
            });
        };
        candidates
            .iter()
            .any(|a| {
                a.verify_signature(issuer.subject_public_key(), tbs, signature)
                    .is_ok()
            })
            .then_some(())
            .ok_or_else(|| ChainError::BadSignature {
                cert: child.cn.clone(),
                issuer: issuer.cn.clone(),
            })
    }

    /// The first certificate whose extended key usage excludes the purpose.
    fn wrong_purpose(&self) -> Option<ChainError> {
        let required = match self.purpose {
            super::Purpose::TpmEndorsementKey => ("2.23.133.8.1", TCG_KP_EK_CERTIFICATE),
            _ => ("2.5.29.37.0", super::ANY_EXTENDED_KEY_USAGE),
        };
        self.by_name().into_iter().find_map(|c| {
            let eku = c.extension("2.5.29.37")?;
            let listed =
                <x509_cert::ext::pkix::ExtendedKeyUsage as x509_cert::der::Decode>::from_der(eku)
                    .ok()?;
            let oids: Vec<String> = listed.0.iter().map(|o| o.to_string()).collect();
            (!listed.0.iter().any(|o| o.as_bytes() == required.1)).then(|| {
                ChainError::WrongPurpose {
                    cert: c.cn.clone(),
                    present: if oids.is_empty() {
                        "empty".into()
                    } else {
                        oids.join(", ")
                    },
                    required: required.0.into(),
                }
            })
        })
    }

    /// The certificate webpki cannot read: the leaf, or an intermediate.
    fn unreadable(&self, err: &E) -> Option<ChainError> {
        let mut all = self.by_name();
        all.extend(self.intermediates.iter().copied());
        all.into_iter().find_map(|c| {
            let der = CertificateDer::from(c.der.as_slice());
            let parsed = webpki::EndEntityCert::try_from(&der);
            match (parsed, err) {
                (Err(e), _) => Some(ChainError::Unreadable {
                    cert: c.cn.clone(),
                    reason: describe(&e, c),
                }),
                (Ok(_), E::InvalidCertValidity) if c.not_before() > c.not_after() => {
                    Some(ChainError::Unreadable {
                        cert: c.cn.clone(),
                        reason: describe(err, c),
                    })
                }
                _ => None,
            }
        })
    }

    /// A refusal about revocation: which CRL (the one that alone gives the
    /// same error), and for a revocation, which certificate.
    fn crl_refusal(&self, err: &E, crls: &[&Crl<'_>]) -> ChainError {
        let chain = self.by_name();
        let webpki_view = |c: &X509Cert| -> Option<(Vec<u8>, Vec<u8>)> {
            let der = CertificateDer::from(c.der.as_slice());
            let cert = webpki::EndEntityCert::try_from(&der).ok()?;
            Some((cert.issuer().to_vec(), cert.serial().to_vec()))
        };
        if let E::UnknownRevocationStatus = err {
            return chain
                .iter()
                .find(|c| {
                    webpki_view(c)
                        .is_some_and(|(issuer, _)| !crls.iter().any(|l| l.list.issuer() == issuer))
                })
                .map_or_else(
                    || ChainError::Other("no CRL covers a certificate of the chain".into()),
                    |c| ChainError::NoCrl {
                        cert: c.cn.clone(),
                        issuer: c.issuer_name(),
                    },
                );
        }
        let culprit = crls.iter().find(|crl| {
            matches!(self.webpki(&[**crl], UnknownStatusPolicy::Allow),
                Err(refusal) if discriminant(&refusal.0) == discriminant(err))
        });
        let crl = culprit.map_or_else(|| "CRL".to_string(), |c| c.label.clone());
        match err {
            E::CertRevoked => {
                let revoked = chain.iter().find(|c| {
                    webpki_view(c).is_some_and(|(issuer, serial)| {
                        culprit
                            .is_some_and(|l| l.list.issuer() == issuer && l.lists_serial(&serial))
                    })
                });
                ChainError::Revoked {
                    cert: revoked
                        .map_or_else(|| "a certificate of the chain".into(), |c| c.cn.clone()),
                    crl,
                }
            }
            E::CrlExpired { next_update, .. } => ChainError::CrlExpired {
                crl,
                next_update: when(next_update.as_secs()),
            },
            E::InvalidCrlSignatureForPublicKey => ChainError::CrlSignature { crl },
            E::IssuerNotCrlSigner => ChainError::CrlUnusable {
                crl,
                reason: "its issuer's key usage does not allow signing CRLs".into(),
            },
            other => ChainError::CrlUnusable {
                crl,
                reason: format!(
                    "it is signed with an algorithm this chain does not use ({other:?})"
                ),
            },
        }
    }
}
