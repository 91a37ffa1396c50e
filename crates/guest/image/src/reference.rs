//! Image references: `[registry[:port]/]repository[:tag][@sha256:hex]`,
//! with Docker Hub's defaults (`docker.io`, `library/`, `latest`).

use std::fmt;

/// Docker Hub's registry name as it appears in references.
pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's API actually lives.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host, with port if any (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// Repository path (`library/busybox`).
    pub repository: String,
    /// Tag, when the reference names one.
    pub tag: Option<String>,
    /// Manifest digest (`sha256:…`), when the reference pins one.
    pub digest: Option<String>,
}

/// Why a reference did not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct ReferenceError {
    reference: String,
    reason: &'static str,
}

/// Whether `host[:port]` is a registry name: DNS-style components of
/// `[A-Za-z0-9-]` (or a bracketed IPv6 literal), then an optional numeric port.
fn valid_host(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, tail)) => {
                if ip.is_empty() || !ip.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
                    return false;
                }
                match tail {
                    "" => return true,
                    t => match t.strip_prefix(':') {
                        Some(p) => {
                            return !p.is_empty()
                                && p.len() <= 5
                                && p.bytes().all(|b| b.is_ascii_digit());
                        }
                        None => return false,
                    },
                }
            }
            None => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    let name_ok = !name.is_empty()
        && name.split('.').all(|c| {
            !c.is_empty()
                && !c.starts_with('-')
                && !c.ends_with('-')
                && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    name_ok && port_ok
}

/// One spelling per registry, so policy scopes cannot be sidestepped:
/// lowercase, no trailing dot, no default HTTPS port.
fn canonical_host(host: &str) -> String {
    let lower = host.to_ascii_lowercase();
    let stripped = lower.strip_suffix(":443").unwrap_or(&lower);
    // `[IPv6]` or `[IPv6]:port`; otherwise `name` or `name:port`.
    let (name, port) = match stripped.find(']') {
        Some(end) if stripped.starts_with('[') => {
            let (addr, tail) = stripped.split_at(end + 1);
            (addr, tail.strip_prefix(':'))
        }
        _ => match stripped.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (stripped, None),
        },
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    let canonical = match port {
        Some(p) => format!("{name}:{p}"),
        None => name.to_string(),
    };
    // Only while it still reads as a registry host when parsed again.
    if canonical.contains('.') || canonical.contains(':') || canonical == "localhost" {
        canonical
    } else {
        lower
    }
}

impl Reference {
    /// Parses a reference the way `docker pull` and `skopeo` (docker://) do.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let err = |reason| ReferenceError {
            reference: s.to_string(),
            reason,
        };
        let s_trim = s.strip_prefix("docker://").unwrap_or(s);
        if s_trim.is_empty() || s_trim.len() > 4096 {
            return Err(err("empty or longer than 4096 bytes"));
        }
        let (rest, digest) = match s_trim.split_once('@') {
            Some((r, d)) => {
                let hex = d
                    .strip_prefix("sha256:")
                    .ok_or_else(|| err("only sha256 digests are supported"))?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(err("digest must be sha256: and 64 hex digits"));
                }
                (r, Some(d.to_ascii_lowercase()))
            }
            None => (s_trim, None),
        };
        // A tag is after the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let t = &rest[last_slash + i + 1..];
                if t.is_empty()
                    || t.len() > 128
                    || !t
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                {
                    return Err(err("tag must be 1-128 of [A-Za-z0-9._-]"));
                }
                (&rest[..last_slash + i], Some(t.to_string()))
            }
            None => (rest, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                if !valid_host(first) {
                    return Err(err(
                        "registry must be a host name or [IPv6] with an optional numeric port",
                    ));
                }
                (canonical_host(first), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.is_empty()
            || repository.split('/').any(|c| {
                c.is_empty()
                    || !c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            })
        {
            return Err(err(
                "repository components must be lowercase [a-z0-9._-] and not empty",
            ));
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host the registry API is reached at.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What to ask the manifest endpoint for: the digest when pinned, else the tag.
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// `registry/repository`, the name signatures and policies match on.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same repository at another tag (cosign signature tags).
    pub fn with_tag(&self, tag: &str) -> Self {
        Self {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: Some(tag.to_string()),
            digest: None,
        }
    }

    /// The same repository pinned to a digest.
    pub fn with_digest(&self, digest: &str) -> Self {
        Self {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest.to_string()),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_defaults() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.api_host(), "registry-1.docker.io");
    }

    #[test]
    fn local_registry_with_port_tag_and_digest() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("127.0.0.1:5000/team/app:v1@{d}")).unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.manifest_ref(), d);
        assert_eq!(r.to_string(), format!("127.0.0.1:5000/team/app:v1@{d}"));
        let r = Reference::parse("localhost/app").unwrap();
        assert_eq!(r.registry, "localhost");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        // One spelling per registry, whatever was typed.
        for spelling in [
            "R.Example.COM/app",
            "r.example.com:443/app",
            "r.example.com./app",
        ] {
            assert_eq!(
                Reference::parse(spelling).unwrap().registry,
                "r.example.com",
                "{spelling}"
            );
        }
        assert_eq!(
            Reference::parse("R.io:5000/app").unwrap().registry,
            "r.io:5000"
        );
        // IPv6 literals keep their brackets, with or without a port.
        for (typed, registry) in [
            ("[::1]/app", "[::1]"),
            ("[::1]:5000/app", "[::1]:5000"),
            ("[FE80::1]:443/app", "[fe80::1]"),
        ] {
            let r = Reference::parse(typed).unwrap();
            assert_eq!(r.registry, registry, "{typed}");
            assert_eq!(Reference::parse(&r.to_string()).unwrap(), r, "{typed}");
        }
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "",
            "UPPER/case",
            "a//b",
            "x@sha256:zz",
            "x@md5:abcd",
            "host:5000/app:",
            "app:bad/tag",
            "[k-2e0{\x12\":443/ie",
            "bad_host.io/app",
            "-x.io/app",
            "r.io:/app",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
