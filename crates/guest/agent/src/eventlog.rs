//! The runtime measurement log (CoCo's AA event log, "AAEL"): one line per
//! event, `<domain> <operation> <content>`, whose digest is extended into a
//! measurement register so a verifier can replay the log against it.

use sha2::{Digest, Sha256, Sha384};
use std::io::Write;
use std::path::PathBuf;

/// Hash used for runtime measurement digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeasurementHash {
    /// SHA-256 (TPM PCR banks).
    Sha256,
    /// SHA-384 (TDX RTMRs).
    Sha384,
}

/// One recorded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Register extended.
    pub register: u64,
    /// The event line.
    pub line: String,
    /// Digest extended, hex.
    pub digest: String,
}

/// The event log, in memory and optionally appended to a file.
#[derive(Debug, Default)]
pub struct EventLog {
    events: Vec<Event>,
    file: Option<PathBuf>,
}

/// Why an event was refused.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// A field would break the one-line-per-event format.
    #[error("event {0} must be non-empty and contain no spaces or newlines")]
    BadField(&'static str),
    /// The log file cannot be written.
    #[error("cannot write the event log {0}")]
    Io(String),
}

impl EventLog {
    /// A log that also appends to `file`.
    pub fn new(file: Option<PathBuf>) -> Self {
        Self {
            events: Vec::new(),
            file,
        }
    }

    /// Builds the event line and its digest (fields are checked first).
    pub fn prepare(
        domain: &str,
        operation: &str,
        content: &str,
        hash: MeasurementHash,
    ) -> Result<(String, Vec<u8>), EventError> {
        for (name, v) in [("domain", domain), ("operation", operation)] {
            if v.is_empty() || v.contains(char::is_whitespace) {
                return Err(EventError::BadField(name));
            }
        }
        if content.contains('\n') {
            return Err(EventError::BadField("content"));
        }
        let line = format!("{domain} {operation} {content}");
        let digest = match hash {
            MeasurementHash::Sha256 => Sha256::digest(line.as_bytes()).to_vec(),
            MeasurementHash::Sha384 => Sha384::digest(line.as_bytes()).to_vec(),
        };
        Ok((line, digest))
    }

    /// Records an event that has been extended into `register`.
    pub fn record(&mut self, register: u64, line: String, digest: &[u8]) -> Result<(), EventError> {
        if let Some(path) = &self.file {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| EventError::Io(format!("{}: {e}", path.display())))?;
            writeln!(f, "{line}")
                .map_err(|e| EventError::Io(format!("{}: {e}", path.display())))?;
        }
        self.events.push(Event {
            register,
            line,
            digest: hex::encode(digest),
        });
        Ok(())
    }

    /// The log as evidence carries it (lines joined by newlines), if any.
    pub fn text(&self) -> Option<String> {
        if self.events.is_empty() {
            return None;
        }
        Some(
            self.events
                .iter()
                .map(|e| e.line.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        )
    }

    /// Events so far.
    pub fn events(&self) -> &[Event] {
        &self.events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_one_line_each_and_hashed_per_tee() {
        let (line, d256) =
            EventLog::prepare("github.com/x", "load", "a b c", MeasurementHash::Sha256).unwrap();
        assert_eq!(line, "github.com/x load a b c");
        assert_eq!(d256.len(), 32);
        let (_, d384) =
            EventLog::prepare("github.com/x", "load", "a b c", MeasurementHash::Sha384).unwrap();
        assert_eq!(d384.len(), 48);
        for (d, o, c) in [
            ("", "op", "c"),
            ("a b", "op", "c"),
            ("d", "o\nx", "c"),
            ("d", "o", "c\nforged line"),
        ] {
            assert!(EventLog::prepare(d, o, c, MeasurementHash::Sha256).is_err());
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("log");
        let mut log = EventLog::new(Some(file.clone()));
        assert_eq!(log.text(), None);
        log.record(23, line.clone(), &d256).unwrap();
        log.record(23, "d o second".into(), &d256).unwrap();
        assert_eq!(log.text().unwrap(), format!("{line}\nd o second"));
        assert_eq!(
            std::fs::read_to_string(file).unwrap(),
            format!("{line}\nd o second\n")
        );
        assert_eq!(log.events().len(), 2);
    }
}
