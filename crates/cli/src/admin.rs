//! `cocoon admin` and `cocoon explain`.

use crate::client::{Connection, check};
use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use clap::{Args, Subcommand, ValueEnum};
use cocoon_kbs::admin::{AdminSigningKey, CLI_TOKEN_LIFETIME_SECS};
use cocoon_types::resource::ResourceUri;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// Admin connection options.
#[derive(Args, Debug)]
pub struct AdminConnection {
    #[command(flatten)]
    pub(crate) conn: Connection,
    /// Admin private key (PEM): Ed25519 or P-256, PKCS#8 (`openssl genpkey`)
    /// or SEC1 (`openssl ecparam -genkey`). Default: the local trustee's
    /// admin key; an Ed25519 key is created there on first use if missing.
    #[arg(long, env = "COCOON_ADMIN_KEY")]
    admin_key: Option<PathBuf>,
}

/// `cocoon admin`.
#[derive(Args, Debug)]
pub struct AdminArgs {
    #[command(flatten)]
    admin: AdminConnection,
    #[command(subcommand)]
    command: AdminCommand,
}

/// Which policy.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum PolicyKind {
    /// The KBS resource policy (who gets which secret).
    Resource,
    /// The attestation policy (claims → trust vector).
    Attestation,
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Store a secret (encrypted at rest) under a resource URI.
    SetResource {
        /// kbs:///repo/type/tag
        uri: String,
        /// File holding the secret bytes.
        #[arg(long)]
        file: PathBuf,
    },
    /// Delete a resource.
    DeleteResource {
        /// kbs:///repo/type/tag
        uri: String,
    },
    /// List stored resources (names only).
    ListResources,
    /// Replace a policy with a Rego file.
    SetPolicy {
        /// resource or attestation
        kind: PolicyKind,
        /// Rego file (package policy).
        #[arg(long)]
        file: PathBuf,
        /// Attestation policy id (default_cpu is what the KBS uses for CPU TEEs).
        #[arg(long, default_value = "default_cpu")]
        id: String,
    },
    /// Print a policy's Rego text.
    GetPolicy {
        /// resource or attestation
        kind: PolicyKind,
        /// Attestation policy id.
        #[arg(long, default_value = "default_cpu")]
        id: String,
    },
    /// Trust a TPM attestation key (PEM public key from `cocoon tpm enroll`).
    AddTpmAk {
        /// PEM (or DER) public key file.
        #[arg(long)]
        file: PathBuf,
        /// Vouch that the AK is in a hardware TPM (or a vTPM you accept as
        /// hardware): without it the default policy holds the `hardware`
        /// claim at the warning tier, since a software TPM on the host
        /// could have made the quote. Adding the AK again changes this.
        #[arg(long)]
        hardware_backed: bool,
    },
    /// List trusted TPM attestation keys.
    ListTpmAks,
    /// Stop trusting a TPM attestation key.
    DeleteTpmAk {
        /// Fingerprint as `list-tpm-aks` prints it.
        fingerprint: String,
    },
    /// Set a reference value: NAME and its accepted VALUEs (strings, or one JSON value with --json).
    AddReferenceValue {
        /// Name the policy queries with query_reference_value(NAME).
        name: String,
        /// Accepted values.
        #[arg(required = true)]
        values: Vec<String>,
        /// Treat the single VALUE as JSON (e.g. a number) instead of a list of strings.
        #[arg(long)]
        json: bool,
        /// When it expires: a duration from now ("30d", "12h") or an RFC 3339 time. Default: one year.
        #[arg(long)]
        expires: Option<String>,
    },
    /// List reference values with their expiry.
    ListReferenceValues,
    /// Expire a reference value now (policies stop seeing it).
    ExpireReferenceValue {
        /// Name.
        name: String,
    },
    /// Delete a reference value.
    DeleteReferenceValue {
        /// Name.
        name: String,
    },
    /// Register reference values from a CoCo RVPS message file ({"version","type","payload"}).
    RegisterReferenceValues {
        /// The message file.
        #[arg(long)]
        file: PathBuf,
    },
    /// Seal new sessions under a new session key. Sessions sealed before
    /// keep working until they expire, on every replica.
    RotateSessionKey {
        /// Also delete every older key now: their sessions end at once and
        /// their guests attest again (for a key that may have leaked).
        #[arg(long)]
        drop_old: bool,
    },
    /// List the session keys (ids and dates, never the keys).
    ListSessionKeys,
}

/// `cocoon explain`.
#[derive(Args, Debug)]
pub struct ExplainArgs {
    #[command(flatten)]
    admin: AdminConnection,
    /// How many recent denials.
    #[arg(long, default_value_t = 10)]
    limit: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn default_admin_key() -> PathBuf {
    cocoon_kbs::server::DataPaths::new(&cocoon_kbs::default_data_dir()).admin_key
}

/// Loads the admin key, creating an Ed25519 key pair on first use.
fn load_or_create_key(path: &Path) -> Result<AdminSigningKey> {
    if !path.exists() {
        let key = AdminSigningKey::generate_ed25519();
        let created = cocoon_store::create_private_file(path, key.to_pkcs8_pem().as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        if created {
            let pub_path = path.with_extension("pub.pem");
            cocoon_store::create_file_exclusive(
                &pub_path,
                key.public_key().to_pem().as_bytes(),
                0o644,
            )
            .with_context(|| format!("cannot write {}", pub_path.display()))?;
            eprintln!(
                "created admin key pair {} (public: {}); start the trustee with --admin-public-key {} to trust it",
                path.display(),
                pub_path.display(),
                pub_path.display()
            );
            return Ok(key);
        }
    }
    AdminSigningKey::from_file(path).with_context(|| format!("admin key {}", path.display()))
}

/// An authenticated admin client of a trustee.
pub(crate) struct Admin {
    pub(crate) conn: Connection,
    pub(crate) http: reqwest::Client,
    key: AdminSigningKey,
}

impl Admin {
    pub(crate) fn new(a: &AdminConnection) -> Result<Self> {
        let path = a.admin_key.clone().unwrap_or_else(default_admin_key);
        Ok(Self {
            http: a.conn.http()?,
            conn: a.conn.clone(),
            key: load_or_create_key(&path)?,
        })
    }

    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        rb.bearer_auth(self.key.token(now, CLI_TOKEN_LIFETIME_SECS))
    }

    /// Sends `rb` with an admin token; non-success answers become errors.
    pub(crate) async fn send(
        &self,
        rb: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<reqwest::Response> {
        let resp = self
            .auth(rb)
            .send()
            .await
            .with_context(|| format!("cannot reach the trustee at {}", self.conn.url))?;
        check(resp, what).await
    }
}

fn resource_path(uri: &str) -> Result<String> {
    Ok(ResourceUri::parse(uri)?.path.to_string())
}

fn parse_expiry(s: &str) -> Result<i64> {
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok(t.unix_timestamp());
    }
    let d = humantime::parse_duration(s).with_context(|| {
        format!("--expires '{s}' is neither a duration (30d) nor an RFC 3339 time")
    })?;
    Ok(time::OffsetDateTime::now_utc().unix_timestamp() + d.as_secs() as i64)
}

fn fmt_time(unix: i64) -> String {
    cocoon_rvps::rfc3339(unix)
}

/// Runs one admin command.
pub async fn run(a: AdminArgs) -> Result<()> {
    let ad = Admin::new(&a.admin)?;
    let c = &ad.conn;
    match a.command {
        AdminCommand::SetResource { uri, file } => {
            let path = resource_path(&uri)?;
            let bytes = zeroize::Zeroizing::new(
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?,
            );
            ad.send(
                ad.http
                    .post(c.kbs(&format!("/resource/{path}")))
                    .header("content-type", "application/octet-stream")
                    .body(bytes.to_vec()),
                "set-resource",
            )
            .await?;
            eprintln!("stored kbs:///{path} ({} bytes)", bytes.len());
        }
        AdminCommand::DeleteResource { uri } => {
            let path = resource_path(&uri)?;
            ad.send(
                ad.http.delete(c.kbs(&format!("/resource/{path}"))),
                "delete-resource",
            )
            .await?;
            eprintln!("deleted kbs:///{path}");
        }
        AdminCommand::ListResources => {
            let list: Vec<String> = ad
                .send(ad.http.get(c.kbs("/resources")), "list-resources")
                .await?
                .json()
                .await?;
            for r in list {
                outln!("kbs:///{r}");
            }
        }
        AdminCommand::SetPolicy { kind, file, id } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let enc = B64URL.encode(text.as_bytes());
            let (path, body) = match kind {
                PolicyKind::Resource => ("/resource-policy", json!({"policy": enc})),
                PolicyKind::Attestation => (
                    "/attestation-policy",
                    json!({"policy_id": id, "policy": enc, "type": "rego"}),
                ),
            };
            ad.send(ad.http.post(c.kbs(path)).json(&body), "set-policy")
                .await?;
            eprintln!("policy updated");
        }
        AdminCommand::GetPolicy { kind, id } => {
            let id = match kind {
                PolicyKind::Resource => "resource-policy".to_string(),
                PolicyKind::Attestation => id,
            };
            let text = ad
                .send(ad.http.get(c.kbs(&format!("/policies/{id}"))), "get-policy")
                .await?
                .text()
                .await?;
            out!("{text}");
        }
        AdminCommand::AddTpmAk {
            file,
            hardware_backed,
        } => {
            let body =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let url = format!("{}?hardware_backed={hardware_backed}", c.kbs("/tpm-ak"));
            let ak: Value = ad
                .send(ad.http.post(url).body(body), "add-tpm-ak")
                .await?
                .json()
                .await?;
            eprintln!(
                "trusted TPM AK {}{}",
                ak["fingerprint"].as_str().unwrap_or("?"),
                if hardware_backed {
                    " as hardware-backed"
                } else {
                    " (not marked hardware-backed: the hardware claim stays at the warning tier)"
                }
            );
        }
        AdminCommand::ListTpmAks => {
            let list: Vec<Value> = ad
                .send(ad.http.get(c.kbs("/tpm-aks")), "list-tpm-aks")
                .await?
                .json()
                .await?;
            for ak in list {
                let mut how = match ak["enrolled_by_ek_of"].as_str() {
                    Some(ca) => format!("  by EK certificate under {ca}"),
                    None => "  by an admin".into(),
                };
                if ak["hardware_backed"].as_bool() == Some(true) {
                    how.push_str(", hardware-backed");
                }
                outln!(
                    "{}  added {}{how}",
                    ak["fingerprint"].as_str().unwrap_or("?"),
                    fmt_time(ak["added"].as_i64().unwrap_or_default())
                );
            }
        }
        AdminCommand::DeleteTpmAk { fingerprint } => {
            ad.send(
                ad.http.delete(c.kbs(&format!("/tpm-ak/{fingerprint}"))),
                "delete-tpm-ak",
            )
            .await?;
            eprintln!("TPM AK {fingerprint} is no longer trusted");
        }
        AdminCommand::AddReferenceValue {
            name,
            values,
            json,
            expires,
        } => {
            let value = if json {
                if values.len() != 1 {
                    bail!("--json takes exactly one VALUE");
                }
                serde_json::from_str::<Value>(&values[0])
                    .with_context(|| format!("'{}' is not JSON", values[0]))?
            } else {
                json!(values)
            };
            let expires = expires.as_deref().map(parse_expiry).transpose()?;
            let rv: Value = ad
                .send(
                    ad.http
                        .put(c.kbs(&format!("/reference-value/{name}")))
                        .json(&json!({"value": value, "expires": expires})),
                    "add-reference-value",
                )
                .await?
                .json()
                .await?;
            eprintln!(
                "reference value {name} = {} (expires {})",
                rv["value"],
                fmt_time(rv["expires"].as_i64().unwrap_or_default())
            );
        }
        AdminCommand::ListReferenceValues => {
            let list: Vec<Value> = ad
                .send(
                    ad.http.get(c.kbs("/reference-values")),
                    "list-reference-values",
                )
                .await?
                .json()
                .await?;
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            for rv in list {
                let exp = rv["expires"].as_i64().unwrap_or_default();
                outln!(
                    "{}\t{}\texpires {}{}",
                    rv["name"].as_str().unwrap_or_default(),
                    rv["value"],
                    fmt_time(exp),
                    if exp <= now { " (EXPIRED)" } else { "" }
                );
            }
        }
        AdminCommand::ExpireReferenceValue { name } => {
            let rv: Value = ad
                .send(
                    ad.http.get(c.kbs(&format!("/reference-value/{name}"))),
                    "expire-reference-value",
                )
                .await?
                .json()
                .await?;
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            ad.send(
                ad.http
                    .put(c.kbs(&format!("/reference-value/{name}")))
                    .json(&json!({"value": rv, "expires": now})),
                "expire-reference-value",
            )
            .await?;
            eprintln!("reference value {name} expired");
        }
        AdminCommand::DeleteReferenceValue { name } => {
            ad.send(
                ad.http.delete(c.kbs(&format!("/reference-value/{name}"))),
                "delete-reference-value",
            )
            .await?;
            eprintln!("reference value {name} deleted");
        }
        AdminCommand::RegisterReferenceValues { file } => {
            let body =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            ad.send(
                ad.http
                    .post(c.kbs("/reference-value"))
                    .header("content-type", "application/json")
                    .body(body),
                "register-reference-values",
            )
            .await?;
            eprintln!("reference values registered");
        }
        AdminCommand::RotateSessionKey { drop_old } => {
            let url = format!("{}?drop_old={drop_old}", c.kbs("/session-keys/rotate"));
            let key: Value = ad
                .send(ad.http.post(url), "rotate-session-key")
                .await?
                .json()
                .await?;
            eprintln!(
                "new sessions are sealed under session key {}{}",
                key["id"].as_str().unwrap_or("?"),
                if drop_old {
                    "; older keys deleted: their sessions have ended"
                } else {
                    "; sessions sealed before keep working until they expire"
                }
            );
        }
        AdminCommand::ListSessionKeys => {
            let keys: Vec<Value> = ad
                .send(ad.http.get(c.kbs("/session-keys")), "list-session-keys")
                .await?
                .json()
                .await?;
            for k in keys {
                let state = match k["retired"].as_i64() {
                    _ if k["current"].as_bool() == Some(true) => "current".to_string(),
                    Some(r) => format!("retired {}", fmt_time(r)),
                    None => "unused".to_string(),
                };
                outln!(
                    "{}  created {}  {state}",
                    k["id"].as_str().unwrap_or("?"),
                    fmt_time(k["created"].as_i64().unwrap_or_default())
                );
            }
        }
    }
    Ok(())
}

/// Prints recent denials.
pub async fn explain(a: ExplainArgs) -> Result<()> {
    let ad = Admin::new(&a.admin)?;
    let list: Vec<cocoon_kbs::api::Denial> = ad
        .send(
            ad.http
                .get(ad.conn.kbs(&format!("/denials?limit={}", a.limit))),
            "explain",
        )
        .await?
        .json()
        .await?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.is_empty() {
        outln!("no denials recorded");
    }
    for d in list {
        let what = match (&d.kind[..], &d.resource) {
            ("resource", Some(r)) => format!("resource kbs:///{r}"),
            (k, _) => k.to_string(),
        };
        outln!(
            "{}  {}  tee={}  {}",
            fmt_time(d.at),
            what,
            d.tee.as_deref().unwrap_or("-"),
            d.reason
        );
        for line in &d.details {
            outln!("    - {line}");
        }
    }
    Ok(())
}
