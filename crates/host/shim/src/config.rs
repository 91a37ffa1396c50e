//! The shim's configuration: a TOML file (containerd's runtime option
//! `ConfigPath`, else `COCOON_SHIM_CONFIG`, else [`DEFAULT_PATH`]; a
//! missing default file means the built-in defaults), and the per-pod
//! settings Kata's annotations may change where the file enables them.

use cocoon_hypervisor::Mode;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where the configuration is read from when containerd names none.
pub const DEFAULT_PATH: &str = "/etc/cocoon/shim.toml";

/// Environment variable naming the configuration file.
pub const ENV_PATH: &str = "COCOON_SHIM_CONFIG";

/// Prefix of Kata's per-pod hypervisor annotations.
pub const HYPERVISOR_ANNOTATION: &str = "io.katacontainers.config.hypervisor.";

/// The shim's settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// A directory made by `cocoon guest build` (`vmlinuz`, `initrd.img`,
    /// `cmdline`).
    pub guest_image: PathBuf,
    /// How the VM is isolated and measured.
    pub mode: Mode,
    /// Firmware instead of the distribution's default for the mode.
    pub firmware: Option<PathBuf>,
    /// vCPUs before the pod's CPU limits are added.
    pub default_vcpus: u32,
    /// Memory (MiB) before the pod's memory limits are added.
    pub default_memory_mib: u32,
    /// Upper bounds on what annotations and pod limits may ask for.
    pub max_vcpus: u32,
    /// See `max_vcpus`.
    pub max_memory_mib: u32,
    /// Extra kernel parameters appended to the image's command line (the
    /// vTPM and TEE measurements cover them).
    pub kernel_params: String,
    /// Which of Kata's per-pod hypervisor annotations are honoured
    /// (`default_vcpus`, `default_memory`, `kernel_params`,
    /// `cc_init_data`); any other fails the pod.
    pub enable_annotations: Vec<String>,
    /// Initdata (TOML file) for pods that bring none.
    pub default_initdata: Option<PathBuf>,
    /// vtpm mode: the local CA that certifies each VM's vTPM.
    pub vtpm_ca: PathBuf,
    /// Per-VM state (sockets, the vTPM); removed on teardown.
    pub state_dir: PathBuf,
    /// Seconds a VM may take until its agent answers.
    pub boot_timeout_secs: u64,
    /// Host loopback ports the guest may reach (`127.0.0.1:PORT`, seen
    /// at the same address in the guest): a trustee or registry on the
    /// node itself. Nothing else on the host is reachable; without any,
    /// the VM has no user network at all.
    pub host_ports: Vec<u16>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            guest_image: PathBuf::from("/opt/cocoon/share/guest-image"),
            mode: Mode::Vtpm,
            firmware: None,
            default_vcpus: 1,
            default_memory_mib: 2048,
            max_vcpus: 8,
            max_memory_mib: 16384,
            kernel_params: String::new(),
            enable_annotations: [
                "default_vcpus",
                "default_memory",
                "kernel_params",
                "cc_init_data",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            default_initdata: None,
            vtpm_ca: PathBuf::from("/var/lib/cocoon/vtpm-ca"),
            state_dir: PathBuf::from("/run/cocoon/shim"),
            boot_timeout_secs: 300,
            host_ports: Vec::new(),
        }
    }
}

/// Why the configuration or a pod's settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the shim configuration {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The file is not valid.
    #[error("the shim configuration {0} is not valid: {1}")]
    Parse(PathBuf, String),
    /// A hypervisor annotation the configuration does not enable.
    #[error(
        "annotation {0} is not enabled (the shim configuration's enable_annotations lists {1:?})"
    )]
    NotEnabled(String, Vec<String>),
    /// A hypervisor annotation with a value that cannot work.
    #[error("annotation {0}: {1}")]
    Invalid(String, String),
}

impl Config {
    /// Reads `path`, or the default location when `None` (where a missing
    /// file means the defaults).
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => match std::env::var_os(ENV_PATH).filter(|v| !v.is_empty()) {
                Some(p) => (PathBuf::from(p), true),
                None => (PathBuf::from(DEFAULT_PATH), false),
            },
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::default());
            }
            Err(e) => return Err(ConfigError::Read(path, e)),
        };
        let c: Config =
            toml::from_str(&text).map_err(|e| ConfigError::Parse(path.clone(), e.to_string()))?;
        let mut paths = vec![
            ("guest_image", &c.guest_image),
            ("vtpm_ca", &c.vtpm_ca),
            ("state_dir", &c.state_dir),
        ];
        paths.extend(c.firmware.iter().map(|f| ("firmware", f)));
        paths.extend(c.default_initdata.iter().map(|f| ("default_initdata", f)));
        if let Some((key, p)) = paths.iter().find(|(_, p)| p.is_relative()) {
            return Err(ConfigError::Parse(
                path,
                format!(
                    "{key} = {:?} must be an absolute path (the shim runs in each bundle's directory)",
                    p.display().to_string()
                ),
            ));
        }
        if c.default_vcpus == 0 || c.default_vcpus > c.max_vcpus {
            return Err(ConfigError::Parse(
                path,
                format!("default_vcpus must be 1..={}", c.max_vcpus),
            ));
        }
        if c.default_memory_mib < 128 || c.default_memory_mib > c.max_memory_mib {
            return Err(ConfigError::Parse(
                path,
                format!("default_memory_mib must be 128..={}", c.max_memory_mib),
            ));
        }
        Ok(c)
    }
}

/// What one pod's VM is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSettings {
    /// vCPUs.
    pub vcpus: u32,
    /// Memory, MiB.
    pub memory_mib: u32,
    /// Kernel parameters beyond the image's.
    pub kernel_params: String,
    /// The initdata document (TOML).
    pub initdata: Option<String>,
    /// An agent policy for SetPolicy (the legacy annotation).
    pub agent_policy: Option<String>,
}

/// Kata's legacy pod annotation with an agent policy (base64 Rego), sent
/// to the guest by SetPolicy.
pub const AGENT_POLICY_ANNOTATION: &str = "io.katacontainers.config.agent.policy";

/// Decodes the legacy agent policy annotation: base64 of the Rego text.
pub fn decode_agent_policy(v: &str) -> Result<String, ConfigError> {
    use base64::Engine;
    let bad = |m: String| ConfigError::Invalid(AGENT_POLICY_ANNOTATION.into(), m);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v.trim())
        .map_err(|e| bad(format!("not base64: {e}")))?;
    if bytes.len() > 4 << 20 {
        return Err(bad(format!("{} bytes is too large", bytes.len())));
    }
    String::from_utf8(bytes).map_err(|_| bad("not UTF-8 text".into()))
}

fn parse_num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, ConfigError> {
    v.trim()
        .parse()
        .map_err(|_| ConfigError::Invalid(key.into(), format!("'{v}' is not a number")))
}

/// Decodes `cc_init_data`: base64 of the gzipped initdata TOML.
pub fn decode_initdata(key: &str, v: &str) -> Result<String, ConfigError> {
    use base64::Engine;
    use std::io::Read;
    let bad = |m: String| ConfigError::Invalid(key.into(), m);
    let gz = base64::engine::general_purpose::STANDARD
        .decode(v.trim())
        .map_err(|e| bad(format!("not base64: {e}")))?;
    let mut text = String::new();
    // Bounded: an initdata document is a few KiB.
    flate2::read::GzDecoder::new(gz.as_slice())
        .take(1 << 20)
        .read_to_string(&mut text)
        .map_err(|e| bad(format!("not gzipped UTF-8 TOML: {e}")))?;
    cocoon_types::initdata::InitData::parse(&text).map_err(|e| bad(e.to_string()))?;
    Ok(text)
}

/// In vtpm mode the firmware's kernel measurement (PCR 4) depends on the
/// memory size; these sizes (and every size from 2816 MiB up) are the
/// ones the guest image build lists reference values for, so a pod's
/// size is rounded up to one of them.
pub fn vtpm_memory_class(mib: u32) -> u32 {
    cocoon_guest_image::PCR4_MEMORY_MIB
        .iter()
        .copied()
        .find(|c| *c >= mib)
        .unwrap_or(mib.max(cocoon_guest_image::vtpm::Q35_HIGH_MEMORY_MIB))
}

impl Config {
    /// The VM of a pod whose sandbox spec carries `annotations`.
    pub fn pod(&self, annotations: &HashMap<String, String>) -> Result<PodSettings, ConfigError> {
        let mut s = PodSettings {
            vcpus: self.default_vcpus,
            memory_mib: self.default_memory_mib,
            kernel_params: self.kernel_params.clone(),
            initdata: None,
            agent_policy: annotations
                .get(AGENT_POLICY_ANNOTATION)
                .map(|v| decode_agent_policy(v))
                .transpose()?,
        };
        let mut keys: Vec<&String> = annotations.keys().collect();
        keys.sort();
        for key in keys {
            let Some(name) = key.strip_prefix(HYPERVISOR_ANNOTATION) else {
                continue;
            };
            if !self.enable_annotations.iter().any(|e| e == name) {
                return Err(ConfigError::NotEnabled(
                    key.clone(),
                    self.enable_annotations.clone(),
                ));
            }
            let v = &annotations[key];
            match name {
                "default_vcpus" => s.vcpus = parse_num(key, v)?,
                "default_memory" => s.memory_mib = parse_num(key, v)?,
                "kernel_params" => {
                    if v.chars().any(|c| c.is_control()) {
                        return Err(ConfigError::Invalid(
                            key.clone(),
                            "control characters".into(),
                        ));
                    }
                    s.kernel_params = [s.kernel_params.as_str(), v.as_str()]
                        .iter()
                        .filter(|p| !p.trim().is_empty())
                        .map(|p| p.trim())
                        .collect::<Vec<_>>()
                        .join(" ");
                }
                "cc_init_data" => s.initdata = Some(decode_initdata(key, v)?),
                other => {
                    return Err(ConfigError::Invalid(
                        key.clone(),
                        format!("'{other}' is not a setting this runtime knows"),
                    ));
                }
            }
        }
        // The pod's own limits come on top, as Kata sizes its VMs.
        use crate::spec::annotations as cri;
        if let Some(bytes) = annotations.get(cri::SANDBOX_MEMORY) {
            let b: u64 = parse_num(cri::SANDBOX_MEMORY, bytes)?;
            let extra = u32::try_from(b.div_ceil(1 << 20)).unwrap_or(u32::MAX);
            s.memory_mib = s.memory_mib.saturating_add(extra);
        }
        if let (Some(q), Some(p)) = (
            annotations.get(cri::SANDBOX_CPU_QUOTA),
            annotations.get(cri::SANDBOX_CPU_PERIOD),
        ) {
            let q: i64 = parse_num(cri::SANDBOX_CPU_QUOTA, q)?;
            let p: i64 = parse_num(cri::SANDBOX_CPU_PERIOD, p)?;
            if q > 0 && p > 0 {
                let extra =
                    u32::try_from(q.unsigned_abs().div_ceil(p.unsigned_abs())).unwrap_or(u32::MAX);
                s.vcpus = s.vcpus.saturating_add(extra);
            }
        }
        if s.vcpus == 0 || s.vcpus > self.max_vcpus {
            return Err(ConfigError::Invalid(
                "vCPUs".into(),
                format!(
                    "the pod asks for {} vCPUs; this runtime allows 1..={}",
                    s.vcpus, self.max_vcpus
                ),
            ));
        }
        if self.mode == Mode::Vtpm {
            s.memory_mib = vtpm_memory_class(s.memory_mib);
        }
        if s.memory_mib < 128 || s.memory_mib > self.max_memory_mib {
            return Err(ConfigError::Invalid(
                "memory".into(),
                format!(
                    "the pod asks for {} MiB; this runtime allows 128..={} MiB",
                    s.memory_mib, self.max_memory_mib
                ),
            ));
        }
        if s.initdata.is_none()
            && let Some(p) = &self.default_initdata
        {
            s.initdata =
                Some(std::fs::read_to_string(p).map_err(|e| ConfigError::Read(p.clone(), e))?);
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn gz_b64(text: &str) -> String {
        use base64::Engine;
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(text.as_bytes()).unwrap();
        base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap())
    }

    #[test]
    fn defaults_need_no_file() {
        let c = Config::default();
        assert_eq!(c.mode, Mode::Vtpm);
        let s = c.pod(&HashMap::new()).unwrap();
        assert_eq!((s.vcpus, s.memory_mib), (1, 2048));
        assert_eq!(s.initdata, None);
    }

    #[test]
    fn a_file_overrides_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("shim.toml");
        std::fs::write(
            &p,
            "mode = \"none\"\ndefault_memory_mib = 512\nhost_ports = [5000]\n",
        )
        .unwrap();
        let c = Config::load(Some(&p)).unwrap();
        assert_eq!(
            (c.mode, c.default_memory_mib, c.host_ports.clone()),
            (Mode::None, 512, vec![5000])
        );
        std::fs::write(&p, "memory = 512\n").unwrap();
        assert!(matches!(
            Config::load(Some(&p)),
            Err(ConfigError::Parse(..))
        ));
        std::fs::write(&p, "default_vcpus = 0\n").unwrap();
        assert!(matches!(
            Config::load(Some(&p)),
            Err(ConfigError::Parse(..))
        ));
        assert!(matches!(
            Config::load(Some(&dir.path().join("missing.toml"))),
            Err(ConfigError::Read(..))
        ));
    }

    #[test]
    fn kata_annotations_size_the_vm_only_where_enabled() {
        let c = Config {
            mode: Mode::None,
            ..Config::default()
        };
        let s = c
            .pod(&ann(&[
                ("io.katacontainers.config.hypervisor.default_vcpus", "2"),
                ("io.katacontainers.config.hypervisor.default_memory", "768"),
                (
                    "io.katacontainers.config.hypervisor.kernel_params",
                    "quiet=1",
                ),
            ]))
            .unwrap();
        assert_eq!(
            (s.vcpus, s.memory_mib, s.kernel_params.as_str()),
            (2, 768, "quiet=1")
        );
        // The pod's own limits come on top.
        let s = c
            .pod(&ann(&[
                ("io.kubernetes.cri.sandbox-memory", "268435456"),
                ("io.kubernetes.cri.sandbox-cpu-quota", "150000"),
                ("io.kubernetes.cri.sandbox-cpu-period", "100000"),
            ]))
            .unwrap();
        assert_eq!((s.vcpus, s.memory_mib), (3, 2048 + 256));
        let e = c
            .pod(&ann(&[(
                "io.katacontainers.config.hypervisor.enable_iommu",
                "true",
            )]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("enable_iommu is not enabled"), "{e}");
        let strict = Config {
            enable_annotations: vec!["cc_init_data".into()],
            ..c.clone()
        };
        assert!(matches!(
            strict.pod(&ann(&[(
                "io.katacontainers.config.hypervisor.default_memory",
                "512"
            )])),
            Err(ConfigError::NotEnabled(..))
        ));
        for (k, v) in [
            ("default_vcpus", "many"),
            ("default_vcpus", "64"),
            ("default_memory", "64"),
            ("default_memory", "999999"),
            ("kernel_params", "a\nb"),
            ("cc_init_data", "not base64!"),
            ("cc_init_data", "aGVsbG8="),
        ] {
            let key = format!("{HYPERVISOR_ANNOTATION}{k}");
            assert!(c.pod(&ann(&[(&key, v)])).is_err(), "{k}={v:?} was accepted");
        }
    }

    #[test]
    fn cc_init_data_is_gzipped_toml_and_reaches_the_vm() {
        let toml = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"aa.toml\" = '''\n[token_configs]\n'''\n";
        let s = Config::default()
            .pod(&ann(&[(
                "io.katacontainers.config.hypervisor.cc_init_data",
                &gz_b64(toml),
            )]))
            .unwrap();
        assert_eq!(s.initdata.as_deref(), Some(toml));
        // Not an initdata document.
        let e = decode_initdata("k", &gz_b64("just text"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("annotation k:"), "{e}");
    }

    #[test]
    fn the_legacy_policy_annotation_is_base64_rego_text() {
        use base64::Engine;
        let rego = "package agent_policy\ndefault CreateContainerRequest := true\n";
        let b64 = base64::engine::general_purpose::STANDARD.encode(rego);
        let s = Config::default()
            .pod(&ann(&[(AGENT_POLICY_ANNOTATION, &b64)]))
            .unwrap();
        assert_eq!(s.agent_policy.as_deref(), Some(rego));
        assert!(
            Config::default()
                .pod(&ann(&[]))
                .unwrap()
                .agent_policy
                .is_none()
        );
        let e = Config::default()
            .pod(&ann(&[(AGENT_POLICY_ANNOTATION, "not base64!")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(AGENT_POLICY_ANNOTATION) && e.contains("not base64"),
            "{e}"
        );
        let not_text = base64::engine::general_purpose::STANDARD.encode([0xff, 0xfe]);
        assert!(decode_agent_policy(&not_text).is_err());
    }

    #[test]
    fn vtpm_vms_are_sized_to_the_memory_classes_reference_values_exist_for() {
        assert_eq!(vtpm_memory_class(100), 256);
        assert_eq!(vtpm_memory_class(512), 512);
        assert_eq!(vtpm_memory_class(600), 1024);
        assert_eq!(vtpm_memory_class(2049), 2816);
        assert_eq!(vtpm_memory_class(4096), 4096);
        let s = Config::default()
            .pod(&ann(&[("io.kubernetes.cri.sandbox-memory", "1")]))
            .unwrap();
        assert_eq!(s.memory_mib, 2816);
    }
}
