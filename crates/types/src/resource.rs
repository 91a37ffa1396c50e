//! Resource paths (`repo/type/tag`) and resource URIs (`kbs:///repo/type/tag`).

use std::fmt;

/// Why a resource path or URI was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    /// Not exactly three segments.
    #[error("resource path '{0}' must have exactly three segments: <repository>/<type>/<tag>")]
    SegmentCount(String),
    /// A segment is empty, starts with '.', or has a character outside `[A-Za-z0-9_.-]`.
    #[error(
        "resource path segment '{0}' is invalid: use letters, digits, '_', '-', '.' and do not start with '.'"
    )]
    BadSegment(String),
    /// The URI does not start with `kbs://`.
    #[error("resource URI '{0}' must start with kbs:// (for example kbs:///default/key/1)")]
    Scheme(String),
}

/// A validated `repo/type/tag` triple, the key of a KBS resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourcePath {
    repository: String,
    kind: String,
    tag: String,
}

fn valid_segment(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() || c == '_' || c == '-' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl ResourcePath {
    /// Parses `repo/type/tag` with the stock KBS's rules.
    pub fn parse(path: &str) -> Result<Self, ResourceError> {
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() != 3 {
            return Err(ResourceError::SegmentCount(path.to_string()));
        }
        for p in &parts {
            if !valid_segment(p) {
                return Err(ResourceError::BadSegment((*p).to_string()));
            }
        }
        Ok(Self {
            repository: parts[0].to_string(),
            kind: parts[1].to_string(),
            tag: parts[2].to_string(),
        })
    }

    /// The repository segment.
    pub fn repository(&self) -> &str {
        &self.repository
    }
    /// The type segment.
    pub fn kind(&self) -> &str {
        &self.kind
    }
    /// The tag segment.
    pub fn tag(&self) -> &str {
        &self.tag
    }
    /// The three segments, as the resource policy sees them.
    pub fn segments(&self) -> [&str; 3] {
        [&self.repository, &self.kind, &self.tag]
    }
}

impl fmt::Display for ResourcePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.repository, self.kind, self.tag)
    }
}

/// A `kbs://[host]/repo/type/tag` URI. The host is kept but the guest
/// normally ignores it and uses its configured KBS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceUri {
    /// The host part (often empty).
    pub host: String,
    /// The resource addressed.
    pub path: ResourcePath,
    /// Query string, forwarded to the KBS unchanged.
    pub query: Option<String>,
}

impl ResourceUri {
    /// Parses `kbs://host/repo/type/tag[?query]`.
    pub fn parse(uri: &str) -> Result<Self, ResourceError> {
        let rest = uri
            .strip_prefix("kbs://")
            .ok_or_else(|| ResourceError::Scheme(uri.to_string()))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q.to_string())),
            None => (rest, None),
        };
        let (host, path) = rest
            .split_once('/')
            .ok_or_else(|| ResourceError::SegmentCount(rest.to_string()))?;
        Ok(Self {
            host: host.to_string(),
            path: ResourcePath::parse(path)?,
            query,
        })
    }
}

impl fmt::Display for ResourceUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kbs://{}/{}", self.host, self.path)?;
        if let Some(q) = &self.query {
            write!(f, "?{q}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_uris() {
        let p = ResourcePath::parse("default/key/1").unwrap();
        assert_eq!(p.segments(), ["default", "key", "1"]);
        let u = ResourceUri::parse("kbs:///default/key/a.b-c_d").unwrap();
        assert_eq!(u.host, "");
        assert_eq!(u.path.tag(), "a.b-c_d");
        assert_eq!(u.to_string(), "kbs:///default/key/a.b-c_d");
        let u = ResourceUri::parse("kbs://kbs.example:8080/r/t/t?x=1").unwrap();
        assert_eq!(u.host, "kbs.example:8080");
        assert_eq!(u.query.as_deref(), Some("x=1"));
    }

    #[test]
    fn rejects_what_the_stock_kbs_rejects() {
        for bad in [
            "a/b", "a/b/c/d", "a//c", ".a/b/c", "a/b/c%2f", "a/b+/c", "a/b:/c", "", "a/b/",
        ] {
            assert!(ResourcePath::parse(bad).is_err(), "{bad} must be rejected");
        }
        assert!(matches!(
            ResourceUri::parse("http://x/a/b/c"),
            Err(ResourceError::Scheme(_))
        ));
        assert!(ResourceUri::parse("kbs://host").is_err());
    }
}
