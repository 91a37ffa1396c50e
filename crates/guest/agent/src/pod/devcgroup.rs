//! The device cgroup of cgroup v2: which device nodes a container may
//! create (mknod), read and write. cgroup v2 has no `devices.allow` file;
//! the kernel asks a `BPF_PROG_TYPE_CGROUP_DEVICE` program attached to the
//! container's cgroup. This module turns the OCI device rules into such a
//! program and attaches it (the `bpf(2)` calls are made here directly: two
//! commands do not justify linking libbpf into PID 1).
//!
//! Rules keep the OCI meaning (the last rule that matches decides; nothing
//! matches: denied), with one change that only ever denies more: a deny
//! rule matches when it names any of the access asked for, where an allow
//! rule must name all of it.

use libcontainer::oci_spec::runtime as oci;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// `access_type`'s low half: the device type.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
/// `access_type`'s high half: what is asked.
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

/// One device rule, as the program checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub allow: bool,
    /// `DEV_BLOCK`, `DEV_CHAR`, or any type.
    pub typ: Option<i32>,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// `ACC_*` bits.
    pub access: i32,
}

/// Why rules could not become a program, or the program not be attached.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("device rule {0}")]
    Rule(String),
    #[error("opening cgroup {0}: {1}")]
    Cgroup(String, std::io::Error),
    #[error("the kernel refused the device program: {0}{1}")]
    Load(std::io::Error, String),
    #[error("attaching the device program to {0}: {1}")]
    Attach(String, std::io::Error),
}

fn access_bits(s: Option<&str>) -> Result<i32, DevError> {
    let s = s.unwrap_or("rwm");
    let mut bits = 0;
    for c in s.chars() {
        bits |= match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => return Err(DevError::Rule(format!("access {s:?}"))),
        };
    }
    Ok(bits)
}

fn number(what: &str, n: Option<i64>) -> Result<Option<u32>, DevError> {
    match n {
        None | Some(-1) => Ok(None),
        // Linux device numbers: 12-bit majors, 20-bit minors (both held to
        // the wider bound; a major past 12 bits just never matches).
        Some(v) if (0..1 << 20).contains(&v) => Ok(Some(v as u32)),
        Some(v) => Err(DevError::Rule(format!("{what} {v}"))),
    }
}

impl Rule {
    /// The OCI rule (`linux.resources.devices[]`).
    pub fn from_oci(r: &oci::LinuxDeviceCgroup) -> Result<Rule, DevError> {
        let typ = match r.typ() {
            None | Some(oci::LinuxDeviceType::A) => None,
            Some(oci::LinuxDeviceType::C) | Some(oci::LinuxDeviceType::U) => Some(DEV_CHAR),
            Some(oci::LinuxDeviceType::B) => Some(DEV_BLOCK),
            Some(t) => return Err(DevError::Rule(format!("type {t:?}"))),
        };
        Ok(Rule {
            allow: r.allow(),
            typ,
            major: number("major", r.major())?,
            minor: number("minor", r.minor())?,
            access: access_bits(r.access().as_deref())?,
        })
    }
}

/// The rules of a spec's `linux.resources.devices`, in order.
pub fn rules_of(spec: &oci::Spec) -> Result<Vec<Rule>, DevError> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.devices().as_ref())
        .into_iter()
        .flatten()
        .map(Rule::from_oci)
        .collect()
}

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    pub code: u8,
    /// dst in the low nibble, src in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

// Opcodes used (class | op | source).
const LDX_W: u8 = 0x61; // BPF_LDX | BPF_W | BPF_MEM
const MOV32_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
const RSH32_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const AND32_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const MOV64_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const JEQ_K: u8 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JNE_X: u8 = 0x5d; // BPF_JMP | BPF_JNE | BPF_X
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// The program for `rules`. Registers: r2 the device type, r3 the access
/// asked, r4 the major, r5 the minor (`struct bpf_cgroup_dev_ctx`: u32
/// access_type, major, minor); r1 is scratch once they are loaded.
pub fn program(rules: &[Rule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(LDX_W, 4, 1, 4, 0),
        insn(LDX_W, 5, 1, 8, 0),
        insn(MOV32_X, 3, 2, 0, 0),
        insn(RSH32_K, 3, 0, 0, 16),
        insn(AND32_K, 2, 0, 0, 0xffff),
    ];
    // Last rule first: the first match found decides.
    for r in rules.iter().rev() {
        let mut block = Vec::new();
        // Each `next` jump is patched to the end of the block.
        if let Some(t) = r.typ {
            block.push(insn(JNE_K, 2, 0, 0, t));
        }
        if let Some(m) = r.major {
            block.push(insn(JNE_K, 4, 0, 0, m as i32));
        }
        if let Some(m) = r.minor {
            block.push(insn(JNE_K, 5, 0, 0, m as i32));
        }
        if r.access != ACC_MKNOD | ACC_READ | ACC_WRITE || !r.allow {
            block.push(insn(MOV32_X, 1, 3, 0, 0));
            block.push(insn(AND32_K, 1, 0, 0, r.access));
            if r.allow {
                // Everything asked must be named.
                block.push(insn(JNE_X, 1, 3, 0, 0));
            } else {
                // Anything asked that is named.
                block.push(insn(JEQ_K, 1, 0, 0, 0));
            }
        }
        block.push(insn(MOV64_K, 0, 0, 0, r.allow as i32));
        block.push(insn(EXIT, 0, 0, 0, 0));
        let end = block.len();
        let mut conditional = false;
        for (i, ins) in block.iter_mut().enumerate() {
            if matches!(ins.code, JNE_K | JNE_X | JEQ_K) {
                ins.off = (end - i - 1) as i16;
                conditional = true;
            }
        }
        p.extend(block);
        // A rule that matches everything decides alone; the kernel
        // refuses code that cannot be reached.
        if !conditional {
            return p;
        }
    }
    p.push(insn(MOV64_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The leading fields of `union bpf_attr` for BPF_PROG_LOAD; the kernel
/// takes the rest as zero.
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for BPF_PROG_ATTACH.
#[repr(C)]
#[derive(Default)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: `attr` is a live, initialized `union bpf_attr` prefix of
    // the size passed; the kernel reads (and for a log, writes through
    // pointers into buffers that outlive the call).
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Has the kernel check and load `prog`; the returned descriptor holds it.
pub fn load(prog: &[Insn]) -> Result<OwnedFd, DevError> {
    let license = c"Apache-2.0";
    let mut name = [0u8; 16];
    name[..6].copy_from_slice(b"cocoon");
    let attr = |log: &mut [u8]| ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: (!log.is_empty()) as u32,
        log_size: log.len() as u32,
        log_buf: if log.is_empty() {
            0
        } else {
            log.as_mut_ptr() as u64
        },
        prog_name: name,
        expected_attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    let e = match bpf(BPF_PROG_LOAD, &mut attr(&mut [])) {
        // SAFETY: a new descriptor the kernel just returned.
        Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(e) => e,
    };
    // Refused: once more with the verifier's log, whose last line says why.
    let mut log = vec![0u8; 1 << 20];
    let _ = bpf(BPF_PROG_LOAD, &mut attr(&mut log));
    let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]);
    let why = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty() && !l.starts_with("processed "))
        .map(|l| format!(" ({})", l.trim()))
        .unwrap_or_default();
    Err(DevError::Load(e, why))
}

/// Attaches a program for `rules` to the cgroup directory `cgroup`. It
/// stays attached as long as the cgroup exists; together with any other
/// program attached there or above, every one of them must allow.
pub fn attach(cgroup: &Path, rules: &[Rule]) -> Result<(), DevError> {
    let prog = load(&program(rules))?;
    let dir = std::fs::File::open(cgroup)
        .map_err(|e| DevError::Cgroup(cgroup.display().to_string(), e))?;
    let mut attr = ProgAttach {
        target_fd: dir.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attr)
        .map(drop)
        .map_err(|e| DevError::Attach(cgroup.display().to_string(), e))
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// Runs `prog` as the kernel would for one access (only the
    /// instructions `program` emits).
    fn run(prog: &[Insn], typ: i32, access: i32, major: u32, minor: u32) -> u64 {
        let ctx = [((access << 16) | typ) as u32, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let (d, s) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_W => {
                    assert_eq!(s, 1, "loads only from the context");
                    r[d] = ctx[i.off as usize / 4] as u64;
                }
                MOV32_X => r[d] = r[s] as u32 as u64,
                RSH32_K => r[d] = ((r[d] as u32) >> i.imm) as u64,
                AND32_K => r[d] = ((r[d] as u32) & i.imm as u32) as u64,
                MOV64_K => r[d] = i.imm as i64 as u64,
                JEQ_K if r[d] == i.imm as i64 as u64 => pc += i.off as usize,
                JNE_K if r[d] != i.imm as i64 as u64 => pc += i.off as usize,
                JNE_X if r[d] != r[s] => pc += i.off as usize,
                JEQ_K | JNE_K | JNE_X => {}
                EXIT => return r[0],
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    /// What the program for `rules` decides for `access` ("r", "rw",
    /// "m"...) to the device `t` ('c' or 'b') `major:minor`.
    pub fn decide(rules: &[Rule], t: char, access: &str, major: u32, minor: u32) -> bool {
        let typ = if t == 'b' { DEV_BLOCK } else { DEV_CHAR };
        let access = access_bits(Some(access)).unwrap();
        run(&program(rules), typ, access, major, minor) == 1
    }

    fn oci_rule(allow: bool, t: &str, major: Option<i64>, minor: Option<i64>, acc: &str) -> Rule {
        let mut r = oci::LinuxDeviceCgroup::default();
        r.set_allow(allow)
            .set_typ(match t {
                "c" => Some(oci::LinuxDeviceType::C),
                "b" => Some(oci::LinuxDeviceType::B),
                _ => Some(oci::LinuxDeviceType::A),
            })
            .set_major(major)
            .set_minor(minor)
            .set_access(Some(acc.into()));
        Rule::from_oci(&r).unwrap()
    }

    const RW: i32 = ACC_READ | ACC_WRITE;

    #[test]
    fn rules_decide_as_the_last_match() {
        let rules = [
            oci_rule(false, "a", None, None, "rwm"),
            oci_rule(true, "c", Some(1), Some(3), "rwm"),
            oci_rule(true, "c", Some(136), None, "rw"),
            oci_rule(true, "c", None, None, "m"),
            oci_rule(true, "b", None, None, "m"),
            oci_rule(false, "c", Some(1), Some(3), "w"),
        ];
        let p = program(&rules);
        // /dev/null readable; its write taken back by the last rule.
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 1, 3), 1);
        assert_eq!(run(&p, DEV_CHAR, ACC_WRITE, 1, 3), 0);
        assert_eq!(run(&p, DEV_CHAR, RW, 1, 3), 0);
        // Any pty slave, but not created; created only by the "m" rule.
        assert_eq!(run(&p, DEV_CHAR, RW, 136, 7), 1);
        assert_eq!(run(&p, DEV_CHAR, ACC_MKNOD, 136, 7), 1);
        assert_eq!(run(&p, DEV_CHAR, ACC_MKNOD | ACC_READ, 136, 7), 0);
        // A block device may be created, never opened.
        assert_eq!(run(&p, DEV_BLOCK, ACC_MKNOD, 254, 0), 1);
        assert_eq!(run(&p, DEV_BLOCK, ACC_READ, 254, 0), 0);
        assert_eq!(run(&p, DEV_BLOCK, RW, 1, 3), 0);
        // hwrng: not listed.
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 10, 183), 0);
        // No rules: nothing.
        assert_eq!(run(&program(&[]), DEV_CHAR, ACC_READ, 1, 3), 0);
        // A wildcard allow after the deny opens everything, as in OCI.
        let open = [
            oci_rule(false, "a", None, None, "rwm"),
            oci_rule(true, "a", None, None, "rwm"),
        ];
        assert_eq!(run(&program(&open), DEV_BLOCK, RW, 8, 0), 1);
        assert_eq!(program(&open).len(), 8, "nothing after the wildcard");
    }

    /// The kernel's verifier accepts what `program` emits (a root test:
    /// loading a cgroup program takes CAP_BPF or CAP_SYS_ADMIN).
    #[test]
    fn the_kernel_accepts_the_programs() {
        let rules = [
            oci_rule(false, "a", None, None, "rwm"),
            oci_rule(true, "c", Some(1), Some(3), "rwm"),
            oci_rule(true, "c", Some(136), None, "rw"),
            oci_rule(true, "b", None, None, "m"),
            oci_rule(false, "c", Some(1), Some(3), "w"),
            oci_rule(true, "a", None, None, "rwm"),
        ];
        for n in 0..=rules.len() {
            if let Err(e) = load(&program(&rules[..n])) {
                panic!("{n} rules: {e} (this test must run as root)");
            }
        }
        // A refusal says why, from the verifier's log.
        let e = load(&[insn(EXIT, 0, 0, 0, 0)]).unwrap_err().to_string();
        assert!(e.contains("R0 !read_ok"), "{e}");
    }

    #[test]
    fn malformed_rules_are_refused() {
        let mut r = oci::LinuxDeviceCgroup::default();
        r.set_access(Some("rwx".into()));
        assert!(Rule::from_oci(&r).unwrap_err().to_string().contains("rwx"));
        let mut r = oci::LinuxDeviceCgroup::default();
        r.set_major(Some(1 << 40));
        assert!(
            Rule::from_oci(&r)
                .unwrap_err()
                .to_string()
                .contains("major")
        );
        let mut r = oci::LinuxDeviceCgroup::default();
        r.set_minor(Some(-5));
        assert!(
            Rule::from_oci(&r)
                .unwrap_err()
                .to_string()
                .contains("minor")
        );
        // No access string means all of it, as in OCI.
        let r = Rule::from_oci(&oci::LinuxDeviceCgroup::default()).unwrap();
        assert_eq!(r.access, ACC_MKNOD | ACC_READ | ACC_WRITE);
        assert_eq!((r.typ, r.major, r.minor), (None, None, None));
    }
}
