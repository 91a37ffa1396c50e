//! The Attestation Agent: owns the attester, binds initdata at start (so a
//! guest launched with other initdata stops before asking for any secret),
//! serves evidence and KBS tokens, and records runtime measurements.

use crate::eventlog::{EventLog, MeasurementHash};
use crate::{AgentError, blocking};
use cocoon_attester::{Attester, AttesterError, AttesterOptions, InitDataBinding};
use cocoon_kbs_client::{ClientOptions, KbsClient, RetryPolicy};
use cocoon_types::initdata::InitData;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Default register for runtime measurements on CPU TEEs (CoCo's default,
/// which maps to TDX RTMR 2).
pub const DEFAULT_RUNTIME_REGISTER: u64 = 17;
/// Default runtime register on a (v)TPM: PCR 23, the application PCR that
/// locality 0 may extend (PCRs 17-22 are reserved for dynamic launch).
pub const DEFAULT_TPM_RUNTIME_REGISTER: u64 = 23;

/// Attestation Agent settings. Every field has a default; KBS settings may
/// also come from the initdata's `aa.toml` (`[token_configs.kbs] url, cert,
/// insecure_http`).
#[derive(Debug, Clone, Default)]
pub struct AaConfig {
    /// TEE to attest as; `None` probes the platform.
    pub tee: Option<String>,
    /// Attester options (TPM TCTI, AK handle).
    pub attester: AttesterOptions,
    /// KBS base URL for tokens.
    pub kbs_url: Option<String>,
    /// KBS certificate to pin (PEM).
    pub kbs_cert_pem: Option<Vec<u8>>,
    /// Accept a plain `http://` KBS URL (development only).
    pub kbs_insecure_http: bool,
    /// Initdata TOML text.
    pub init_data: Option<String>,
    /// Register runtime measurements go to when a request names none.
    pub runtime_register: Option<u64>,
    /// File the runtime event log is appended to.
    pub event_log_file: Option<PathBuf>,
    /// KBS retry policy.
    pub retry: RetryPolicy,
}

/// KBS settings from initdata's `aa.toml`.
#[derive(Debug, Default, serde::Deserialize)]
struct AaToml {
    #[serde(default)]
    token_configs: TokenConfigs,
}

#[derive(Debug, Default, serde::Deserialize)]
struct TokenConfigs {
    kbs: Option<KbsTokenConfig>,
}

/// `[token_configs.kbs]`: CoCo's `url` and `cert`, plus `insecure_http`
/// (ours; stock agents ignore keys they do not know, so one file serves both).
#[derive(Debug, serde::Deserialize)]
struct KbsTokenConfig {
    url: String,
    #[serde(default)]
    cert: Option<String>,
    /// Allow a plain `http://` url (development only).
    #[serde(default)]
    insecure_http: bool,
}

/// Whether a TEE measures into TPM PCRs (SHA-256).
fn is_vtpm(tee: &str) -> bool {
    tee == "tpm" || tee.ends_with("vtpm")
}

/// The agent's attester: the TEE's evidence plus the runtime event log, so
/// every attestation (GetEvidence and the agent's own KBS handshakes)
/// carries the log the measurement register replays to. The log lock is
/// held across a register extend and across evidence collection, so no
/// evidence sees a register without its log line or the reverse.
struct LoggedAttester {
    inner: Box<dyn Attester>,
    log: Mutex<EventLog>,
}

impl LoggedAttester {
    fn log(&self) -> std::sync::MutexGuard<'_, EventLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Attester for LoggedAttester {
    fn tee(&self) -> cocoon_types::Tee {
        self.inner.tee()
    }

    fn may_block(&self) -> bool {
        self.inner.may_block()
    }

    fn evidence(&self, report_data: &[u8]) -> Result<Value, AttesterError> {
        let log = self.log();
        let mut ev = self.inner.evidence(report_data)?;
        if let (Some(text), Value::Object(map)) = (log.text(), &mut ev) {
            map.insert("aa_eventlog".into(), Value::String(text));
        }
        Ok(ev)
    }

    fn extend_runtime_measurement(&self, index: u32, digest: &[u8]) -> Result<(), AttesterError> {
        self.inner.extend_runtime_measurement(index, digest)
    }

    fn bind_init_data(&self, digest: &[u8]) -> Result<InitDataBinding, AttesterError> {
        self.inner.bind_init_data(digest)
    }

    fn endorsement(&self) -> Result<Option<cocoon_attester::Endorsement>, AttesterError> {
        self.inner.endorsement()
    }

    fn activate_credential(
        &self,
        id_object: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, AttesterError> {
        self.inner.activate_credential(id_object, encrypted_secret)
    }
}

/// Fills the KBS URL and certificate of `cfg` from an AA config TOML
/// (`[token_configs.kbs] url, cert`, CoCo's `aa.toml`) where they are unset;
/// `insecure_http = true` there allows a plain-HTTP KBS as the flag does.
pub fn apply_aa_toml(cfg: &mut AaConfig, text: &str) -> Result<(), AgentError> {
    let parsed: AaToml = toml::from_str(text)
        .map_err(|e| AgentError::Config(format!("AA config (aa.toml) is not valid: {e}")))?;
    if let Some(k) = parsed.token_configs.kbs {
        cfg.kbs_url.get_or_insert(k.url);
        if cfg.kbs_cert_pem.is_none() {
            cfg.kbs_cert_pem = k.cert.map(String::into_bytes);
        }
        cfg.kbs_insecure_http |= k.insecure_http;
    }
    Ok(())
}

/// The Attestation Agent.
pub struct AttestationAgent {
    attester: Arc<LoggedAttester>,
    tee: String,
    kbs: Option<KbsClient>,
    binding: InitDataBinding,
    register: u64,
}

impl AttestationAgent {
    /// Builds the attester, binds initdata, and prepares the KBS client.
    pub async fn start(mut cfg: AaConfig) -> Result<Self, AgentError> {
        let inner = match &cfg.tee {
            Some(t) => cocoon_attester::attester_for(t, &cfg.attester)?,
            None => cocoon_attester::detect(&cfg.attester)?,
        };
        let attester = Arc::new(LoggedAttester {
            inner,
            log: Mutex::new(EventLog::new(cfg.event_log_file.clone())),
        });
        let tee = cocoon_types::tee_name(attester.tee());
        let init_data = match &cfg.init_data {
            Some(text) => Some(InitData::parse(text)?),
            None => None,
        };
        let mut binding = InitDataBinding::Unbound;
        if let Some(init) = &init_data {
            let a = attester.clone();
            let digest = init.digest.clone();
            binding = blocking(move || a.bind_init_data(&digest)).await??;
            tracing::info!(tee = %tee, ?binding, digest = %hex::encode(&init.digest), "initdata bound");
            if let Some(aa) = init.data.get("aa.toml") {
                apply_aa_toml(&mut cfg, aa)?;
            }
        }
        let kbs = match &cfg.kbs_url {
            Some(url) => Some(KbsClient::new(
                url,
                attester.clone(),
                ClientOptions {
                    retry: cfg.retry,
                    kbs_cert_pem: cfg.kbs_cert_pem.clone(),
                    init_data: cfg.init_data.clone(),
                    key_pair: None,
                    insecure_http: cfg.kbs_insecure_http,
                },
            )?),
            None => None,
        };
        let register = cfg.runtime_register.unwrap_or(if is_vtpm(&tee) {
            DEFAULT_TPM_RUNTIME_REGISTER
        } else {
            DEFAULT_RUNTIME_REGISTER
        });
        Ok(Self {
            attester,
            tee,
            kbs,
            binding,
            register,
        })
    }

    /// The TEE name (`tpm`, `tdx`, `sample`, ...).
    pub fn tee(&self) -> &str {
        &self.tee
    }

    /// How initdata was bound.
    pub fn init_data_binding(&self) -> InitDataBinding {
        self.binding
    }

    /// The KBS client, when a KBS is configured.
    pub fn kbs(&self) -> Option<&KbsClient> {
        self.kbs.as_ref()
    }

    /// Evidence JSON bytes with `runtime_data` as the report data (as CoCo's
    /// GetEvidence: passed unchanged, at most the TEE's field size), plus
    /// the runtime event log when one was recorded.
    pub async fn evidence(&self, runtime_data: &[u8]) -> Result<Vec<u8>, AgentError> {
        // Evidence for the configured KBS (the data hub's requests) is of
        // use only once that KBS trusts the key that signs it.
        if let Some(kbs) = &self.kbs {
            kbs.enroll_once().await;
        }
        let a = self.attester.clone();
        let rd = runtime_data.to_vec();
        let ev = blocking(move || a.evidence(&rd)).await??;
        serde_json::to_vec(&ev).map_err(|e| AgentError::Internal(e.to_string()))
    }

    /// A token of `kind`: for `kbs`, `{"token": <EAR JWT>, "tee_keypair": <PEM>}`.
    pub async fn token(&self, kind: &str) -> Result<Vec<u8>, AgentError> {
        match kind {
            "kbs" => {
                let kbs = self.kbs.as_ref().ok_or_else(|| {
                    AgentError::Config(
                        "no KBS configured: pass --kbs-url or set [token_configs.kbs] url in initdata aa.toml".into(),
                    )
                })?;
                let token = kbs.token().await?;
                let pem = kbs
                    .key_pair()
                    .private_pem()
                    .map_err(|e| AgentError::Internal(e.to_string()))?;
                let body = json!({"token": token, "tee_keypair": pem.as_str()});
                serde_json::to_vec(&body).map_err(|e| AgentError::Internal(e.to_string()))
            }
            other => Err(AgentError::BadRequest(format!(
                "token type '{other}' is not supported (supported: kbs)"
            ))),
        }
    }

    /// Records `<domain> <operation> <content>` and extends its digest into
    /// `register` (default: the configured runtime register).
    pub async fn extend_runtime_measurement(
        &self,
        domain: &str,
        operation: &str,
        content: &str,
        register: Option<u64>,
    ) -> Result<(), AgentError> {
        let register = register.unwrap_or(self.register);
        let hash = if is_vtpm(&self.tee) {
            MeasurementHash::Sha256
        } else {
            MeasurementHash::Sha384
        };
        let (line, digest) = EventLog::prepare(domain, operation, content, hash)?;
        let index = u32::try_from(register)
            .map_err(|_| AgentError::BadRequest(format!("register {register} is out of range")))?;
        let a = self.attester.clone();
        blocking(move || -> Result<(), AgentError> {
            let mut log = a.log();
            a.inner.extend_runtime_measurement(index, &digest)?;
            log.record(register, line, &digest)?;
            Ok(())
        })
        .await??;
        Ok(())
    }

    /// Binds an initdata digest supplied at run time (BindInitData).
    pub async fn bind_init_data(&self, digest: &[u8]) -> Result<InitDataBinding, AgentError> {
        let a = self.attester.clone();
        let d = digest.to_vec();
        Ok(blocking(move || a.bind_init_data(&d)).await??)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stock CoCo aa.toml (other sections, no insecure key) parses and
    /// leaves plain HTTP refused; `insecure_http = true` next to the url
    /// allows it.
    #[test]
    fn aa_toml_insecure_http_key() {
        let stock = "[token_configs.coco_as]\nurl = \"http://as\"\n\n[token_configs.kbs]\nurl = \"http://10.0.2.2:8080\"\n\n[eventlog_config]\ninit_pcr = 17\nenable_eventlog = false\n";
        let mut cfg = AaConfig::default();
        apply_aa_toml(&mut cfg, stock).unwrap();
        assert_eq!(cfg.kbs_url.as_deref(), Some("http://10.0.2.2:8080"));
        assert!(!cfg.kbs_insecure_http);
        let dev = "[token_configs.kbs]\nurl = \"http://10.0.2.2:8080\"\ninsecure_http = true\n";
        let mut cfg = AaConfig::default();
        apply_aa_toml(&mut cfg, dev).unwrap();
        assert!(cfg.kbs_insecure_http);
    }

    /// The agent does not start against a plain-HTTP KBS from a stock
    /// aa.toml; the key next to the url lets it.
    #[tokio::test]
    async fn agent_refuses_a_plain_http_kbs_unless_allowed() {
        let sample = |aa: &str| {
            let mut cfg = AaConfig {
                tee: Some("sample".into()),
                ..AaConfig::default()
            };
            apply_aa_toml(&mut cfg, aa).unwrap();
            cfg
        };
        let url = "[token_configs.kbs]\nurl = \"http://127.0.0.1:9\"\n";
        let err = AttestationAgent::start(sample(url))
            .await
            .err()
            .expect("refused");
        assert!(
            matches!(
                err,
                AgentError::Kbs(cocoon_kbs_client::ClientError::InsecureHttp { .. })
            ),
            "{err}"
        );
        let allowed = format!("{url}insecure_http = true\n");
        assert!(AttestationAgent::start(sample(&allowed)).await.is_ok());
    }
}
