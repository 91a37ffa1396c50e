//! Talking to a TPM: a TCTI string picks the transport (a character device
//! such as `/dev/tpmrm0`, or swtpm's TCP data channel), and [`Tpm`] sends
//! the handful of commands attestation needs.

use crate::TpmError;
use crate::structs::{
    ALG_NULL, ALG_SHA256, KeyAlgorithm, PCR_COUNT, PcrSelection, Public, Signature, ak_template,
    ek_rsa_template, read_pcr_selection_list, write_pcr_selection_list,
};
use crate::wire::{Reader, Writer};
use std::io::{Read, Write};
use std::time::Duration;

/// The default persistent handle of the AK (CoCo's attester uses it too).
pub const DEFAULT_AK_HANDLE: u32 = 0x8101_0002;
/// The conventional persistent handle of the RSA EK.
pub const DEFAULT_EK_HANDLE: u32 = 0x8101_0001;

const ST_NO_SESSIONS: u16 = 0x8001;
const ST_SESSIONS: u16 = 0x8002;
const RS_PW: u32 = 0x4000_0009;
const RH_OWNER: u32 = 0x4000_0001;
const RH_ENDORSEMENT: u32 = 0x4000_000B;

const CC_EVICT_CONTROL: u32 = 0x120;
const CC_CREATE_PRIMARY: u32 = 0x131;
const CC_STARTUP: u32 = 0x144;
const CC_QUOTE: u32 = 0x158;
const CC_FLUSH_CONTEXT: u32 = 0x165;
const CC_READ_PUBLIC: u32 = 0x173;
const CC_PCR_READ: u32 = 0x17E;
const CC_PCR_EXTEND: u32 = 0x182;

const CC_ACTIVATE_CREDENTIAL: u32 = 0x147;
const CC_POLICY_SECRET: u32 = 0x151;
const CC_START_AUTH_SESSION: u32 = 0x176;
const RH_NULL: u32 = 0x4000_0007;
/// TPM_SE_POLICY.
const SE_POLICY: u8 = 0x01;

const CC_NV_DEFINE_SPACE: u32 = 0x12A;
const CC_NV_WRITE: u32 = 0x137;
const CC_NV_READ: u32 = 0x14E;
const CC_NV_READ_PUBLIC: u32 = 0x169;

/// NV chunk size: below every TPM's TPM_PT_NV_BUFFER_MAX.
const NV_CHUNK: usize = 512;
/// TPMA_NV_OWNERWRITE | TPMA_NV_OWNERREAD | TPMA_NV_NO_DA.
const NV_OWNER_RW: u32 = (1 << 1) | (1 << 17) | (1 << 25);

const RC_INITIALIZE: u32 = 0x100;
const MAX_RESPONSE: usize = 8192;

/// An authorization session in a command.
#[derive(Clone)]
enum Auth {
    /// The empty password.
    Password,
    /// A policy session.
    Policy {
        /// Session handle.
        session: u32,
        /// Caller nonce.
        nonce: Vec<u8>,
    },
}

/// Where the TPM is: parsed from a tpm2-tss style TCTI string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tcti {
    /// A TPM character device (`device:/dev/tpmrm0`).
    Device(String),
    /// swtpm's TCP data channel (`swtpm:host=127.0.0.1,port=2321`).
    Swtpm {
        /// Host name or address.
        host: String,
        /// Data channel port.
        port: u16,
    },
}

impl Default for Tcti {
    fn default() -> Self {
        Tcti::Device("/dev/tpmrm0".into())
    }
}

impl std::fmt::Display for Tcti {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tcti::Device(p) => write!(f, "device:{p}"),
            Tcti::Swtpm { host, port } => write!(f, "swtpm:host={host},port={port}"),
        }
    }
}

impl std::str::FromStr for Tcti {
    type Err = TpmError;

    /// `device[:PATH]` or `swtpm[:host=H,port=P]` (defaults: `/dev/tpmrm0`,
    /// `localhost:2321`, as in tpm2-tss).
    fn from_str(s: &str) -> Result<Self, TpmError> {
        let (kind, conf) = s.split_once(':').unwrap_or((s, ""));
        match kind {
            "device" => Ok(Tcti::Device(if conf.is_empty() {
                "/dev/tpmrm0".into()
            } else {
                conf.into()
            })),
            "swtpm" => {
                let mut host = "localhost".to_string();
                let mut port = 2321u16;
                for kv in conf.split(',').filter(|kv| !kv.is_empty()) {
                    match kv.split_once('=') {
                        Some(("host", h)) => host = h.to_string(),
                        Some(("port", p)) => {
                            port = p.parse().map_err(|_| {
                                TpmError::Tcti(format!("port '{p}' is not a number"))
                            })?
                        }
                        _ => {
                            return Err(TpmError::Tcti(format!(
                                "unknown swtpm option '{kv}' (expected host=H,port=P)"
                            )));
                        }
                    }
                }
                Ok(Tcti::Swtpm { host, port })
            }
            other => Err(TpmError::Tcti(format!(
                "unknown TCTI '{other}': use device:/dev/tpmrm0 or swtpm:host=H,port=P"
            ))),
        }
    }
}

enum Transport {
    Device(std::fs::File),
    Tcp(std::net::TcpStream),
}

/// An open TPM. Commands are synchronous; keep one per task.
pub struct Tpm {
    io: Transport,
}

/// A quote as produced by the TPM.
#[derive(Debug, Clone)]
pub struct Quote {
    /// TPMS_ATTEST bytes (what was signed).
    pub attest: Vec<u8>,
    /// TPMT_SIGNATURE bytes.
    pub signature: Vec<u8>,
}

fn response_code_text(rc: u32) -> String {
    let fmt1 = rc & 0x80 != 0;
    let meaning = if fmt1 {
        match rc & 0x3f {
            0x0b => "handle does not exist (TPM_RC_HANDLE)",
            0x0e => "authorization failed (TPM_RC_AUTH_FAIL)",
            0x04 => "value out of range (TPM_RC_VALUE)",
            0x15 => "size error (TPM_RC_SIZE)",
            0x0f => "bad authorization (TPM_RC_BAD_AUTH)",
            _ => "format-one error",
        }
    } else {
        match rc {
            0x100 => "TPM not initialized (TPM_RC_INITIALIZE)",
            0x101 => "TPM failure (TPM_RC_FAILURE)",
            0x14c => "NV space or persistent handle in use (TPM_RC_NV_DEFINED)",
            0x143 => "command code not supported (TPM_RC_COMMAND_CODE)",
            0x902 => "out of object memory (TPM_RC_OBJECT_MEMORY)",
            0x922 => "TPM busy, retry (TPM_RC_RETRY)",
            0x907 => {
                "not allowed from this locality (TPM_RC_LOCALITY): PCRs 17-22 need a dynamic-launch locality, use 16 or 23"
            }
            0x908 => "TPM yielded (TPM_RC_YIELDED)",
            _ => "see TPM 2.0 Part 2 response codes",
        }
    };
    format!("0x{rc:x}: {meaning}")
}

/// Whether `rc` says a handle does not exist.
fn is_handle_error(rc: u32) -> bool {
    rc & 0x80 != 0 && rc & 0x3f == 0x0b
}

impl Tpm {
    /// Opens the TPM named by `tcti`.
    pub fn open(tcti: &Tcti) -> Result<Self, TpmError> {
        let io = match tcti {
            Tcti::Device(path) => Transport::Device(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(|e| TpmError::Io(format!("cannot open TPM device {path}: {e}")))?,
            ),
            Tcti::Swtpm { host, port } => {
                let s = std::net::TcpStream::connect((host.as_str(), *port)).map_err(|e| {
                    TpmError::Io(format!(
                        "cannot connect to swtpm at {host}:{port}: {e} (is swtpm running with --server type=tcp,port={port}?)"
                    ))
                })?;
                let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
                let _ = s.set_nodelay(true);
                Transport::Tcp(s)
            }
        };
        Ok(Self { io })
    }

    fn transact(&mut self, cmd: &[u8]) -> Result<Vec<u8>, TpmError> {
        let io_err = |e: std::io::Error| TpmError::Io(format!("TPM I/O: {e}"));
        match &mut self.io {
            Transport::Device(f) => {
                f.write_all(cmd).map_err(io_err)?;
                let mut buf = vec![0u8; MAX_RESPONSE];
                let n = f.read(&mut buf).map_err(io_err)?;
                buf.truncate(n);
                Ok(buf)
            }
            Transport::Tcp(s) => {
                s.write_all(cmd).map_err(io_err)?;
                let mut head = [0u8; 10];
                s.read_exact(&mut head).map_err(io_err)?;
                let size = u32::from_be_bytes([head[2], head[3], head[4], head[5]]) as usize;
                if !(10..=MAX_RESPONSE).contains(&size) {
                    return Err(TpmError::Io(format!("TPM response size {size} is invalid")));
                }
                let mut buf = head.to_vec();
                buf.resize(size, 0);
                s.read_exact(&mut buf[10..]).map_err(io_err)?;
                Ok(buf)
            }
        }
    }

    /// Sends one command: `handles` go in the handle area, followed by
    /// `auth_count` empty-password sessions, then `params`. Transient
    /// RETRY/YIELDED/TESTING answers are retried. Returns the response after
    /// its 10-byte header (response handles, then the parameter size when
    /// sessions were used, then the parameters).
    fn command(
        &mut self,
        name: &'static str,
        cc: u32,
        handles: &[u32],
        auth_count: usize,
        params: &[u8],
    ) -> Result<Vec<u8>, TpmError> {
        self.command_with(name, cc, handles, &vec![Auth::Password; auth_count], params)
    }

    /// [`Self::command`] with the given authorization sessions.
    fn command_with(
        &mut self,
        name: &'static str,
        cc: u32,
        handles: &[u32],
        auths: &[Auth],
        params: &[u8],
    ) -> Result<Vec<u8>, TpmError> {
        let auth_count = auths.len();
        let mut body = Writer::new();
        for h in handles {
            body.u32(*h);
        }
        if auth_count > 0 {
            let mut area = Writer::new();
            for a in auths {
                match a {
                    // TPMS_AUTH_COMMAND{TPM_RS_PW, empty nonce, continueSession, empty hmac}
                    Auth::Password => {
                        area.u32(RS_PW).u16(0).u8(1).u16(0);
                    }
                    // A policy session whose policy holds: a caller nonce,
                    // no continueSession (the TPM flushes it), empty hmac.
                    Auth::Policy { session, nonce } => {
                        area.u32(*session).tpm2b(nonce).u8(0).u16(0);
                    }
                }
            }
            let area = area.into_inner();
            body.u32(area.len() as u32);
            body.bytes(&area);
        }
        body.bytes(params);
        let body = body.into_inner();
        let mut cmd = Writer::new();
        cmd.u16(if auth_count > 0 {
            ST_SESSIONS
        } else {
            ST_NO_SESSIONS
        })
        .u32(10 + body.len() as u32)
        .u32(cc)
        .bytes(&body);
        let cmd = cmd.into_inner();
        let mut resp = self.transact(&cmd)?;
        // RETRY, YIELDED and TESTING are transient: send the command again.
        for attempt in 0..20u64 {
            let rc = resp
                .get(6..10)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
            if !matches!(rc, Some(0x922 | 0x908 | 0x90a)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5 * (attempt + 1)));
            resp = self.transact(&cmd)?;
        }
        let mut r = Reader::new(&resp, "TPM response");
        let _tag = r.u16()?;
        let size = r.u32()? as usize;
        let rc = r.u32()?;
        if rc != 0 {
            return Err(TpmError::Response {
                command: name,
                rc,
                text: response_code_text(rc),
            });
        }
        if size != resp.len() {
            return Err(TpmError::Io(format!(
                "{name}: response says {size} bytes, got {}",
                resp.len()
            )));
        }
        Ok(resp[10..].to_vec())
    }

    /// TPM2_Startup(CLEAR); an already started TPM is fine.
    pub fn startup(&mut self) -> Result<(), TpmError> {
        match self.command("TPM2_Startup", CC_STARTUP, &[], 0, &[0, 0]) {
            Ok(_) => Ok(()),
            Err(TpmError::Response { rc, .. }) if rc == RC_INITIALIZE => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads the SHA-256 bank, PCRs 0-23.
    pub fn pcr_read_sha256(&mut self) -> Result<Vec<[u8; 32]>, TpmError> {
        let mut values: Vec<Option<[u8; 32]>> = vec![None; PCR_COUNT];
        // A TPM returns at most 8 digests per call: ask again for the rest.
        for _ in 0..PCR_COUNT {
            let missing: Vec<u8> = (0..PCR_COUNT as u8)
                .filter(|i| values[*i as usize].is_none())
                .collect();
            if missing.is_empty() {
                break;
            }
            let mut p = Writer::new();
            write_pcr_selection_list(
                &mut p,
                &[PcrSelection {
                    hash: ALG_SHA256,
                    pcrs: missing,
                }],
            );
            let resp = self.command("TPM2_PCR_Read", CC_PCR_READ, &[], 0, &p.into_inner())?;
            let mut r = Reader::new(&resp, "TPM2_PCR_Read response");
            let _counter = r.u32()?;
            let sel = read_pcr_selection_list(&mut r)?;
            let count = r.u32()? as usize;
            let returned: Vec<u8> = sel
                .iter()
                .filter(|s| s.hash == ALG_SHA256)
                .flat_map(|s| s.pcrs.clone())
                .collect();
            if returned.is_empty() || count != returned.len() {
                return Err(TpmError::Io(
                    "TPM2_PCR_Read returned no SHA-256 PCRs: is the SHA-256 bank allocated?".into(),
                ));
            }
            for idx in returned {
                let d = r.tpm2b(64)?;
                let v: [u8; 32] = d.try_into().map_err(|_| TpmError::Parse {
                    what: "TPM2_PCR_Read response",
                    detail: format!("digest of {} bytes in the SHA-256 bank", d.len()),
                })?;
                if let Some(slot) = values.get_mut(idx as usize) {
                    *slot = Some(v);
                }
            }
        }
        values
            .into_iter()
            .map(|v| v.ok_or_else(|| TpmError::Io("TPM did not return every PCR".into())))
            .collect()
    }

    /// Extends SHA-256 PCR `index` with `digest`.
    pub fn pcr_extend_sha256(&mut self, index: u32, digest: &[u8; 32]) -> Result<(), TpmError> {
        if index as usize >= PCR_COUNT {
            return Err(TpmError::Tcti(format!("PCR index {index} is out of 0-23")));
        }
        let mut p = Writer::new();
        p.u32(1).u16(ALG_SHA256).bytes(digest);
        self.command(
            "TPM2_PCR_Extend",
            CC_PCR_EXTEND,
            &[index],
            1,
            &p.into_inner(),
        )?;
        Ok(())
    }

    /// TPM2_ReadPublic: the public area of `handle`, or `None` if no object
    /// is there.
    pub fn read_public(&mut self, handle: u32) -> Result<Option<Public>, TpmError> {
        self.read_public_bytes(handle)?
            .map(|b| Public::parse(&b))
            .transpose()
    }

    /// The TPMT_PUBLIC bytes of the object at `handle` (what its name hashes).
    pub fn read_public_bytes(&mut self, handle: u32) -> Result<Option<Vec<u8>>, TpmError> {
        let resp = match self.command("TPM2_ReadPublic", CC_READ_PUBLIC, &[handle], 0, &[]) {
            Ok(r) => r,
            Err(TpmError::Response { rc, .. }) if is_handle_error(rc) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut r = Reader::new(&resp, "TPM2_ReadPublic response");
        Ok(Some(r.tpm2b(1024)?.to_vec()))
    }

    /// TPM2_ActivateCredential: recovers the secret a verifier bound to the
    /// AK at `ak_handle` and encrypted to the EK at `ek_handle` (the blobs
    /// of [`crate::credential::make_credential`]). The EK's policy,
    /// PolicySecret(TPM_RH_ENDORSEMENT), is satisfied in a policy session.
    pub fn activate_credential(
        &mut self,
        ak_handle: u32,
        ek_handle: u32,
        id_object: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Vec<u8>, TpmError> {
        let mut nonce = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
        // StartAuthSession: unbound, unsalted policy session, SHA-256.
        let mut p = Writer::new();
        p.tpm2b(&nonce)
            .tpm2b(&[])
            .u8(SE_POLICY)
            .u16(ALG_NULL)
            .u16(ALG_SHA256);
        let resp = self.command(
            "TPM2_StartAuthSession",
            CC_START_AUTH_SESSION,
            &[RH_NULL, RH_NULL],
            0,
            &p.into_inner(),
        )?;
        let session = Reader::new(&resp, "TPM2_StartAuthSession response").u32()?;
        let result = (|| {
            let mut p = Writer::new();
            p.tpm2b(&[]).tpm2b(&[]).tpm2b(&[]).u32(0);
            self.command(
                "TPM2_PolicySecret",
                CC_POLICY_SECRET,
                &[RH_ENDORSEMENT, session],
                1,
                &p.into_inner(),
            )?;
            let mut p = Writer::new();
            p.bytes(id_object).bytes(encrypted_secret);
            let resp = self.command_with(
                "TPM2_ActivateCredential",
                CC_ACTIVATE_CREDENTIAL,
                &[ak_handle, ek_handle],
                &[
                    Auth::Password,
                    Auth::Policy {
                        session,
                        nonce: nonce.to_vec(),
                    },
                ],
                &p.into_inner(),
            )?;
            let mut r = Reader::new(&resp, "TPM2_ActivateCredential response");
            let _param_size = r.u32()?;
            Ok(r.tpm2b(64)?.to_vec())
        })();
        if result.is_err() {
            // Only a failed command leaves the session loaded.
            let _ = self.flush(session);
        }
        result
    }

    fn create_primary(&mut self, hierarchy: u32, template: &[u8]) -> Result<u32, TpmError> {
        let mut p = Writer::new();
        // inSensitive: empty userAuth and data
        p.u16(4).u16(0).u16(0);
        p.tpm2b(template);
        p.u16(0); // outsideInfo
        p.u32(0); // creationPCR
        let resp = self.command(
            "TPM2_CreatePrimary",
            CC_CREATE_PRIMARY,
            &[hierarchy],
            1,
            &p.into_inner(),
        )?;
        let mut r = Reader::new(&resp, "TPM2_CreatePrimary response");
        r.u32()
    }

    fn flush(&mut self, handle: u32) -> Result<(), TpmError> {
        self.command(
            "TPM2_FlushContext",
            CC_FLUSH_CONTEXT,
            &[],
            0,
            &handle.to_be_bytes(),
        )?;
        Ok(())
    }

    fn persist(&mut self, transient: u32, persistent: u32) -> Result<(), TpmError> {
        let r = self.command(
            "TPM2_EvictControl",
            CC_EVICT_CONTROL,
            &[RH_OWNER, transient],
            1,
            &persistent.to_be_bytes(),
        );
        // Transient objects are not flushed for us without a resource manager.
        let f = self.flush(transient);
        r?;
        f
    }

    /// Creates a primary key from `template` in the endorsement hierarchy
    /// and makes it persistent at `handle`, unless an object is already
    /// there. Returns its public part and whether it was created.
    pub fn ensure_persistent_key(
        &mut self,
        handle: u32,
        template: &[u8],
    ) -> Result<(Public, bool), TpmError> {
        if let Some(p) = self.read_public(handle)? {
            return Ok((p, false));
        }
        let t = self.create_primary(RH_ENDORSEMENT, template)?;
        self.persist(t, handle)?;
        let p = self.read_public(handle)?.ok_or_else(|| {
            TpmError::Io(format!(
                "key persisted at 0x{handle:08x} cannot be read back"
            ))
        })?;
        Ok((p, true))
    }

    /// Creates (or loads) the restricted signing AK at `handle`.
    pub fn ensure_ak(
        &mut self,
        handle: u32,
        alg: KeyAlgorithm,
    ) -> Result<(Public, bool), TpmError> {
        let (p, created) = self.ensure_persistent_key(handle, &ak_template(alg))?;
        if !p.is_restricted_signing() {
            return Err(TpmError::Io(format!(
                "the object at 0x{handle:08x} is not a restricted signing key: pick another --ak-handle"
            )));
        }
        Ok((p, created))
    }

    /// Creates (or loads) the TCG default RSA EK at `handle`.
    pub fn ensure_ek(&mut self, handle: u32) -> Result<(Public, bool), TpmError> {
        self.ensure_persistent_key(handle, &ek_rsa_template())
    }

    /// Size of NV index `index`, or `None` if it is not defined.
    pub fn nv_size(&mut self, index: u32) -> Result<Option<usize>, TpmError> {
        let resp = match self.command("TPM2_NV_ReadPublic", CC_NV_READ_PUBLIC, &[index], 0, &[]) {
            Ok(r) => r,
            Err(TpmError::Response { rc, .. }) if is_handle_error(rc) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut r = Reader::new(&resp, "TPM2_NV_ReadPublic response");
        let public = r.tpm2b(256)?;
        let mut p = Reader::new(public, "TPMS_NV_PUBLIC");
        let _index = p.u32()?;
        let _name_alg = p.u16()?;
        let _attrs = p.u32()?;
        let _policy = p.tpm2b(64)?;
        Ok(Some(p.u16()? as usize))
    }

    /// Reads the whole NV index `index` with owner authorization.
    pub fn nv_read(&mut self, index: u32) -> Result<Vec<u8>, TpmError> {
        let size = self
            .nv_size(index)?
            .ok_or_else(|| TpmError::Io(format!("NV index 0x{index:08x} is not defined")))?;
        let mut out = Vec::with_capacity(size);
        while out.len() < size {
            let n = (size - out.len()).min(NV_CHUNK);
            let mut p = Writer::new();
            p.u16(n as u16).u16(out.len() as u16);
            let resp = self.command(
                "TPM2_NV_Read",
                CC_NV_READ,
                &[RH_OWNER, index],
                1,
                &p.into_inner(),
            )?;
            let mut r = Reader::new(&resp, "TPM2_NV_Read response");
            let _param_size = r.u32()?;
            let data = r.tpm2b(NV_CHUNK)?;
            if data.is_empty() {
                return Err(TpmError::Io("TPM2_NV_Read returned no data".into()));
            }
            out.extend_from_slice(data);
        }
        Ok(out)
    }

    /// Defines NV index `index` of `data.len()` bytes (owner read/write)
    /// unless it exists, and writes `data` to it.
    pub fn nv_write(&mut self, index: u32, data: &[u8]) -> Result<(), TpmError> {
        if data.len() > u16::MAX as usize {
            return Err(TpmError::Tcti("NV data exceeds 64 KiB".into()));
        }
        if self.nv_size(index)?.is_none() {
            let mut public = Writer::new();
            public
                .u32(index)
                .u16(ALG_SHA256)
                .u32(NV_OWNER_RW)
                .tpm2b(&[])
                .u16(data.len() as u16);
            let public = public.into_inner();
            let mut p = Writer::new();
            p.tpm2b(&[]).tpm2b(&public);
            self.command(
                "TPM2_NV_DefineSpace",
                CC_NV_DEFINE_SPACE,
                &[RH_OWNER],
                1,
                &p.into_inner(),
            )?;
        }
        for (i, chunk) in data.chunks(NV_CHUNK).enumerate() {
            let mut p = Writer::new();
            p.tpm2b(chunk).u16((i * NV_CHUNK) as u16);
            self.command(
                "TPM2_NV_Write",
                CC_NV_WRITE,
                &[RH_OWNER, index],
                1,
                &p.into_inner(),
            )?;
        }
        Ok(())
    }

    /// Quotes SHA-256 PCRs 0-23 with the AK at `ak_handle`, with
    /// `qualifying_data` (at most 64 bytes) as extraData.
    pub fn quote(&mut self, ak_handle: u32, qualifying_data: &[u8]) -> Result<Quote, TpmError> {
        if qualifying_data.len() > crate::structs::MAX_DIGEST {
            return Err(TpmError::Tcti(format!(
                "qualifying data of {} bytes exceeds 64",
                qualifying_data.len()
            )));
        }
        let mut p = Writer::new();
        p.tpm2b(qualifying_data);
        p.u16(ALG_NULL); // the key's own scheme
        write_pcr_selection_list(&mut p, &[PcrSelection::sha256_all()]);
        let resp = match self.command("TPM2_Quote", CC_QUOTE, &[ak_handle], 1, &p.into_inner()) {
            Err(TpmError::Response { rc, .. }) if is_handle_error(rc) => {
                return Err(TpmError::NoAk(ak_handle));
            }
            r => r?,
        };
        let mut r = Reader::new(&resp, "TPM2_Quote response");
        let param_size = r.u32()? as usize;
        // The parameters are TPM2B_ATTEST then TPMT_SIGNATURE; the session
        // area follows them.
        let mut params = Reader::new(r.bytes(param_size)?, "TPM2_Quote parameters");
        let attest = params.tpm2b(2048)?.to_vec();
        let signature = params.bytes(params.remaining())?.to_vec();
        // Refuse a signature this crate could not verify later.
        Signature::parse(&signature)?;
        Ok(Quote { attest, signature })
    }
}
