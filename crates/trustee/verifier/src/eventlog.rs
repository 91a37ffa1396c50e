//! The TCG crypto-agile event log (TCG PC Client Platform Firmware Profile,
//! §10): what UEFI firmware measured, as a TPM's firmware log or a TDX
//! CCEL. The first event (SHA-1 format) carries the `Spec ID Event03`
//! header that lists the digest algorithms; the rest are `TCG_PCR_EVENT2`.
//! Replaying the digests per index reproduces PCRs (or RTMRs).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Events accepted at most (a firmware log has hundreds).
const MAX_EVENTS: usize = 100_000;
/// Largest event data accepted.
const MAX_EVENT_DATA: usize = 16 << 20;

/// Why a log did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed TCG event log at byte {offset}: {reason}")]
pub struct EventLogError {
    offset: usize,
    reason: String,
}

/// A TCG digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct AlgId(pub u16);

impl AlgId {
    /// SHA-1.
    pub const SHA1: AlgId = AlgId(0x0004);
    /// SHA-256.
    pub const SHA256: AlgId = AlgId(0x000b);
    /// SHA-384.
    pub const SHA384: AlgId = AlgId(0x000c);
    /// SHA-512.
    pub const SHA512: AlgId = AlgId(0x000d);

    /// The name used in claims (`SHA-384`).
    pub fn name(self) -> String {
        match self {
            Self::SHA1 => "SHA-1".into(),
            Self::SHA256 => "SHA-256".into(),
            Self::SHA384 => "SHA-384".into(),
            Self::SHA512 => "SHA-512".into(),
            AlgId(x) => format!("0x{x:04x}"),
        }
    }

    fn ring(self) -> Option<&'static ring::digest::Algorithm> {
        match self {
            Self::SHA1 => Some(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY),
            Self::SHA256 => Some(&ring::digest::SHA256),
            Self::SHA384 => Some(&ring::digest::SHA384),
            Self::SHA512 => Some(&ring::digest::SHA512),
            _ => None,
        }
    }
}

/// The event type of events that are logged but never extended.
pub const EV_NO_ACTION: u32 = 0x3;

/// One measured event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcgEvent {
    /// PCR index (for a CCEL: the measurement register index, 1-4 = RTMR0-3).
    pub index: u32,
    /// Event type.
    pub event_type: u32,
    /// One digest per algorithm.
    pub digests: Vec<(AlgId, Vec<u8>)>,
    /// The event data.
    pub data: Vec<u8>,
}

/// A parsed log.
#[derive(Debug, Clone)]
pub struct TcgEventLog {
    /// Digest algorithms and sizes, from the Spec ID event.
    pub algorithms: Vec<(AlgId, u16)>,
    /// Events after the header, in order.
    pub events: Vec<TcgEvent>,
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn err(&self, reason: impl Into<String>) -> EventLogError {
        EventLogError {
            offset: self.pos,
            reason: reason.into(),
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], EventLogError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| self.err(format!("{n} bytes past the end")))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, EventLogError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u16(&mut self) -> Result<u16, EventLogError> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u8(&mut self) -> Result<u8, EventLogError> {
        Ok(self.take(1)?[0])
    }
}

/// `EV_*` names.
pub fn event_type_name(t: u32) -> String {
    let n = match t {
        0x0 => "EV_PREBOOT_CERT",
        0x1 => "EV_POST_CODE",
        0x2 => "EV_UNUSED",
        EV_NO_ACTION => "EV_NO_ACTION",
        0x4 => "EV_SEPARATOR",
        0x5 => "EV_ACTION",
        0x6 => "EV_EVENT_TAG",
        0x7 => "EV_S_CRTM_CONTENTS",
        0x8 => "EV_S_CRTM_VERSION",
        0x9 => "EV_CPU_MICROCODE",
        0xa => "EV_PLATFORM_CONFIG_FLAGS",
        0xb => "EV_TABLE_OF_DEVICES",
        0xc => "EV_COMPACT_HASH",
        0xd => "EV_IPL",
        0xe => "EV_IPL_PARTITION_DATA",
        0xf => "EV_NONHOST_CODE",
        0x10 => "EV_NONHOST_CONFIG",
        0x11 => "EV_NONHOST_INFO",
        0x12 => "EV_OMIT_BOOT_DEVICE_EVENTS",
        0x8000_0001 => "EV_EFI_VARIABLE_DRIVER_CONFIG",
        0x8000_0002 => "EV_EFI_VARIABLE_BOOT",
        0x8000_0003 => "EV_EFI_BOOT_SERVICES_APPLICATION",
        0x8000_0004 => "EV_EFI_BOOT_SERVICES_DRIVER",
        0x8000_0005 => "EV_EFI_RUNTIME_SERVICES_DRIVER",
        0x8000_0006 => "EV_EFI_GPT_EVENT",
        0x8000_0007 => "EV_EFI_ACTION",
        0x8000_0008 => "EV_EFI_PLATFORM_FIRMWARE_BLOB",
        0x8000_0009 => "EV_EFI_HANDOFF_TABLES",
        0x8000_000a => "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
        0x8000_000b => "EV_EFI_HANDOFF_TABLES2",
        0x8000_000c => "EV_EFI_VARIABLE_BOOT2",
        0x8000_000d => "EV_EFI_GPT_EVENT2",
        0x8000_0010 => "EV_EFI_HCRTM_EVENT",
        0x8000_00e0 => "EV_EFI_VARIABLE_AUTHORITY",
        0x8000_00e1 => "EV_EFI_SPDM_FIRMWARE_BLOB",
        0x8000_00e2 => "EV_EFI_SPDM_FIRMWARE_CONFIG",
        _ => return format!("0x{t:08x}"),
    };
    n.to_string()
}

impl TcgEventLog {
    /// Parses a log; trailing `0xFF`/`0x00` padding (a CCEL area) ends it.
    pub fn parse(b: &[u8]) -> Result<Self, EventLogError> {
        let mut c = Cursor { b, pos: 0 };
        // The header event, SHA-1 format.
        let _index = c.u32()?;
        let event_type = c.u32()?;
        if event_type != EV_NO_ACTION {
            return Err(c.err("the first event is not the EV_NO_ACTION Spec ID event"));
        }
        c.take(20)?;
        let size = c.u32()? as usize;
        let spec = c.take(size)?;
        let mut s = Cursor { b: spec, pos: 0 };
        if s.take(16)? != b"Spec ID Event03\0" {
            return Err(c.err("not a crypto-agile log (no Spec ID Event03)"));
        }
        let _platform_class = s.u32()?;
        let (_minor, _major, _errata, _uintn) = (s.u8()?, s.u8()?, s.u8()?, s.u8()?);
        let n = s.u32()? as usize;
        if n == 0 || n > 16 {
            return Err(c.err(format!("{n} digest algorithms")));
        }
        let mut algorithms = Vec::with_capacity(n);
        for _ in 0..n {
            let (id, len) = (AlgId(s.u16()?), s.u16()?);
            if len == 0 || len > 64 {
                return Err(c.err(format!("digest size {len}")));
            }
            algorithms.push((id, len));
        }
        let mut events = Vec::new();
        // Where trailing padding (all 0xFF, or all 0x00) starts, found once.
        let data_end = |pad: u8| b.iter().rposition(|x| *x != pad).map_or(0, |i| i + 1);
        let (end_ff, end_00) = (data_end(0xff), data_end(0));
        while c.b.len() - c.pos >= 8 {
            if c.pos >= end_ff || c.pos >= end_00 {
                break;
            }
            let index = c.u32()?;
            let event_type = c.u32()?;
            if index == 0xffff_ffff {
                break; // padding
            }
            let count = c.u32()? as usize;
            if count > algorithms.len() {
                return Err(c.err(format!(
                    "{count} digests, the header lists {}",
                    algorithms.len()
                )));
            }
            // Every measured event carries one digest per bank the header
            // lists: an event with only some could not be replayed in all.
            if event_type != EV_NO_ACTION && count != algorithms.len() {
                return Err(c.err(format!(
                    "an event with {count} digests, the header lists {} banks",
                    algorithms.len()
                )));
            }
            let mut digests: Vec<(AlgId, Vec<u8>)> = Vec::with_capacity(count);
            for _ in 0..count {
                let id = AlgId(c.u16()?);
                let len = algorithms
                    .iter()
                    .find(|(a, _)| *a == id)
                    .map(|(_, l)| *l as usize)
                    .ok_or_else(|| {
                        c.err(format!(
                            "digest algorithm {} is not in the header",
                            id.name()
                        ))
                    })?;
                if digests.iter().any(|(a, _)| *a == id) {
                    return Err(c.err(format!("two {} digests in one event", id.name())));
                }
                digests.push((id, c.take(len)?.to_vec()));
            }
            let size = c.u32()? as usize;
            if size > MAX_EVENT_DATA {
                return Err(c.err(format!("{size}-byte event")));
            }
            let data = c.take(size)?.to_vec();
            if events.len() >= MAX_EVENTS {
                return Err(c.err("too many events"));
            }
            events.push(TcgEvent {
                index,
                event_type,
                digests,
                data,
            });
        }
        Ok(Self { algorithms, events })
    }

    /// Extends every index from zeros with `alg`'s digests, in order
    /// (EV_NO_ACTION events are not extended). A `StartupLocality` event
    /// sets PCR 0's starting value to its locality (the TPM's start-up
    /// locality 3 or 4 under an H-CRTM), as the TPM did.
    pub fn replay(&self, alg: AlgId) -> BTreeMap<u32, Vec<u8>> {
        let mut regs: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
        let Some(h) = alg.ring() else {
            return regs;
        };
        for e in &self.events {
            if e.event_type == EV_NO_ACTION
                && e.index == 0
                && e.data.len() == 17
                && e.data.starts_with(b"StartupLocality\0")
            {
                let mut start = vec![0u8; h.output_len()];
                start[h.output_len() - 1] = e.data[16];
                regs.insert(0, start);
            }
        }
        for e in self.events.iter().filter(|e| e.event_type != EV_NO_ACTION) {
            let Some((_, d)) = e.digests.iter().find(|(a, _)| *a == alg) else {
                continue;
            };
            let reg = regs
                .entry(e.index)
                .or_insert_with(|| vec![0u8; h.output_len()]);
            let mut ctx = ring::digest::Context::new(h);
            ctx.update(reg);
            ctx.update(d);
            *reg = ctx.finish().as_ref().to_vec();
        }
        regs
    }

    /// The events as claims: index, type name, digests, event data (b64)
    /// and whether the data hashes to the digest.
    pub fn to_json(&self) -> Value {
        self.to_json_where(|_| true)
    }

    /// [`Self::to_json`] for the events `keep` accepts (the ones a
    /// verifier replayed against a register).
    pub fn to_json_where(&self, keep: impl Fn(&TcgEvent) -> bool) -> Value {
        let events: Vec<Value> = self
            .events
            .iter()
            .filter(|e| keep(e))
            .map(|e| {
                let matches = e.digests.iter().all(|(a, d)| {
                    a.ring().is_some_and(|h| ring::digest::digest(h, &e.data).as_ref() == d.as_slice())
                });
                json!({
                    "index": e.index,
                    "type_name": event_type_name(e.event_type),
                    "digests": e.digests.iter().map(|(a, d)| json!({"alg": a.name(), "digest": hex::encode(d)})).collect::<Vec<_>>(),
                    "event": B64.encode(&e.data),
                    "digest_matches_event": matches,
                })
            })
            .collect();
        json!({ "uefi_event_logs": events })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: cocoon_fixtures::Dir = cocoon_fixtures::Dir("eventlog");

    /// Every event of both captured CCELs, field by field against the
    /// expected parse.
    #[test]
    fn captured_ccels_match_the_expected_events() {
        for name in ["trustee_ccel_ovmf", "trustee_ccel_grub"] {
            let bin = std::fs::read(format!("{FIXTURES}/{name}.bin")).unwrap();
            let expected: Value = serde_json::from_slice(
                &std::fs::read(format!("{FIXTURES}/{name}.expected.json")).unwrap(),
            )
            .unwrap();
            let expected = expected["uefi_event_logs"].as_array().unwrap();
            let log = TcgEventLog::parse(&bin).unwrap();
            assert_eq!(log.algorithms, vec![(AlgId::SHA384, 48)], "{name}");
            let got = log.to_json();
            let got = got["uefi_event_logs"].as_array().unwrap();
            assert_eq!(got.len(), expected.len(), "{name}: event count");
            for (i, (g, e)) in got.iter().zip(expected).enumerate() {
                for field in [
                    "index",
                    "type_name",
                    "digests",
                    "event",
                    "digest_matches_event",
                ] {
                    assert_eq!(g[field], e[field], "{name} event {i} field {field}");
                }
            }
            let regs = log.replay(AlgId::SHA384);
            assert!(
                regs.keys().all(|k| (1..=4).contains(k)),
                "{name}: {:?}",
                regs.keys()
            );
            assert!(regs.values().all(|v| v.len() == 48));
        }
    }

    #[test]
    fn truncated_and_mutated_logs_error_without_panic() {
        let bin = std::fs::read(format!("{FIXTURES}/trustee_ccel_ovmf.bin")).unwrap();
        let end = 2120;
        for cut in [0, 7, 40, 100, 500, end - 1] {
            let _ = TcgEventLog::parse(&bin[..cut]);
        }
        let mut x = 0x1234_5678_u32;
        for _ in 0..5000 {
            let mut m = bin[..end].to_vec();
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let at = x as usize % m.len();
            m[at] ^= 1 << (x % 8);
            let _ = TcgEventLog::parse(&m);
        }
        assert!(TcgEventLog::parse(b"not a log at all, definitely").is_err());
    }
}
