//! Wire encodings of the Kata agent API messages, checked byte for byte
//! against encodings built here by hand from Kata's field numbers and types
//! (tag = field number << 3 | wire type; varints; length-delimited bytes),
//! never by the generated code. Each encoding is also decoded back.
//!
//! | message | field numbers checked |
//! |---|---|
//! | `CreateContainerRequest` | 1 container_id, 2 exec_id, 3 string_user, 4 devices, 5 storages, 6 OCI, 7 sandbox_pidns |
//! | `StringUser` | 1 uid, 2 gid, 3 additionalGids |
//! | `Device` | 1 id, 2 type, 3 vm_path, 4 container_path, 5 options |
//! | `Storage` | 1 driver, 2 driver_options, 3 source, 4 fstype, 5 options, 6 mount_point, 7 fs_group |
//! | `FSGroup` | 2 group_id, 3 group_change_policy |
//! | `Spec` | 1 Version, 2 Process, 3 Root, 4 Hostname, 5 Mounts, 7 Annotations (map), 8 Linux |
//! | `Process` | 1 Terminal, 2 ConsoleSize, 3 User, 4 Args, 5 Env, 6 Cwd, 7 Capabilities, 8 Rlimits, 9 NoNewPrivileges, 11 OOMScoreAdj (negative int64) |
//! | `Box` | 1 Height, 2 Width |
//! | `User` | 1 UID, 2 GID, 3 AdditionalGids (packed) |
//! | `LinuxCapabilities` | 1 Bounding, 3 Inheritable, 5 Ambient |
//! | `POSIXRlimit` | 1 Type, 2 Hard, 3 Soft |
//! | `Mount` | 1 destination, 2 source, 3 type, 4 options |
//! | `Root` | 1 Path, 2 Readonly |
//! | `Linux` | 5 CgroupsPath, 6 Namespaces |
//! | `LinuxNamespace` | 1 Type, 2 Path |
//! | `ExecProcessRequest` | 1 container_id, 2 exec_id, 3 string_user, 4 process, 5 stdin_port, 6 stdout_port, 7 stderr_port |
//! | `SignalProcessRequest` | 1 container_id, 2 exec_id (empty, omitted), 3 signal |
//! | `ReadStreamRequest` | 1 container_id, 2 exec_id, 3 len |
//! | `WaitProcessResponse` | 1 status (positive and negative int32) |
//! | `UpdateInterfaceRequest` | 1 interface |
//! | `Interface` | 1 device, 2 name, 3 IPAddresses, 4 mtu, 5 hwAddr, 6 devicePath, 7 type, 8 raw_flags |
//! | `IPAddress` | 1 family (v4 omitted, v6 = 1), 2 address, 3 mask |
//! | `StatsContainerResponse` | 1 cgroup_stats, 2 network_stats |
//! | `CgroupStats` | 1 cpu_stats, 2 memory_stats, 3 pids_stats, 5 hugetlb_stats (map) |
//! | `CpuStats` / `CpuUsage` / `ThrottlingData` | 1, 2 / 1 total_usage, 2 percpu_usage (packed), 3, 4 / 1, 2, 3 |
//! | `MemoryStats` / `MemoryData` | 1 cache, 2 usage, 6 stats (map) / 1 usage, 2 max_usage, 3 failcnt, 4 limit |
//! | `PidsStats` / `HugetlbStats` | 1 current, 2 limit / 1 usage, 2 max_usage, 3 failcnt |
//! | `NetworkStats` | 1 name, 2 rx_bytes, 5 rx_dropped, 6 tx_bytes, 9 tx_dropped |
//! | `HealthCheckResponse` | 1 status (SERVING = 1) |

use cocoon_guest_protos::kata::agent::{
    CgroupStats, CpuStats, CpuUsage, CreateContainerRequest, Device, ExecProcessRequest, FSGroup,
    HugetlbStats, MemoryData, MemoryStats, NetworkStats, PidsStats, ReadStreamRequest,
    SignalProcessRequest, StatsContainerResponse, Storage, StringUser, ThrottlingData,
    UpdateInterfaceRequest, WaitProcessResponse,
};
use cocoon_guest_protos::kata::health::{HealthCheckResponse, health_check_response};
use cocoon_guest_protos::kata::oci::{
    Box as ConsoleBox, Linux, LinuxCapabilities, LinuxNamespace, Mount, POSIXRlimit, Process, Root,
    Spec, User,
};
use cocoon_guest_protos::kata::types::{FSGroupChangePolicy, IPAddress, IPFamily, Interface};
use cocoon_guest_protos::protobuf::{Message, MessageField};
use std::collections::HashMap;

/// Protobuf wire format, written out from the encoding rules.
mod wire {
    const VARINT: u64 = 0;
    const LEN: u64 = 2;

    pub fn varint(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let low = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(low);
                return out;
            }
            out.push(low | 0x80);
        }
    }

    pub fn tag(field: u64, wire_type: u64) -> Vec<u8> {
        varint((field << 3) | wire_type)
    }

    /// uint32, uint64, bool and enum fields.
    pub fn uint(field: u64, v: u64) -> Vec<u8> {
        [tag(field, VARINT), varint(v)].concat()
    }

    /// int32 and int64 fields: negative values are sign-extended to 64 bits.
    pub fn int(field: u64, v: i64) -> Vec<u8> {
        uint(field, v as u64)
    }

    pub fn bytes(field: u64, b: &[u8]) -> Vec<u8> {
        [tag(field, LEN), varint(b.len() as u64), b.to_vec()].concat()
    }

    pub fn string(field: u64, s: &str) -> Vec<u8> {
        bytes(field, s.as_bytes())
    }

    /// An embedded message made of already-encoded fields.
    pub fn message(field: u64, fields: &[Vec<u8>]) -> Vec<u8> {
        bytes(field, &fields.concat())
    }

    /// A proto3 repeated scalar: one length-delimited run of varints.
    pub fn packed(field: u64, values: &[u64]) -> Vec<u8> {
        let run: Vec<u8> = values.iter().flat_map(|v| varint(*v)).collect();
        bytes(field, &run)
    }

    /// One map entry: key is field 1, value field 2.
    pub fn map_entry(field: u64, key: &str, value: Vec<u8>) -> Vec<u8> {
        message(field, &[string(1, key), value])
    }
}

use wire::{int, map_entry, message, packed, string, uint};

#[test]
fn wire_helper_matches_the_encoding_rules() {
    // Examples straight from the protobuf encoding documentation.
    assert_eq!(wire::varint(1), [0x01]);
    assert_eq!(wire::varint(150), [0x96, 0x01]);
    assert_eq!(wire::varint(300), [0xac, 0x02]);
    assert_eq!(uint(1, 150), [0x08, 0x96, 0x01]);
    assert_eq!(string(2, "testing"), b"\x12\x07testing");
    assert_eq!(wire::tag(16, 0), [0x80, 0x01]);
    assert_eq!(
        int(1, -1),
        [
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
        ]
    );
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

const CID: &str = "9f2c1d0e";
const ROOTFS: &str = "/run/kata-containers/9f2c1d0e/rootfs";
const IMAGE: &str = "registry.example/app:1.0";
const PULL_OPTION: &str =
    r#"image_guest_pull={"metadata":{"io.kubernetes.cri.image-name":"registry.example/app:1.0"}}"#;

fn create_container_request() -> CreateContainerRequest {
    let process = Process {
        User: MessageField::some(User {
            UID: 1000,
            GID: 1000,
            AdditionalGids: vec![10, 1000],
            ..Default::default()
        }),
        Args: strings(&["/bin/sh", "-c", "echo hi"]),
        Env: strings(&["PATH=/usr/bin:/bin", "HOME=/home/app"]),
        Cwd: "/srv".into(),
        ..Default::default()
    };
    let linux = Linux {
        CgroupsPath: "/kubepods/pod1/9f2c1d0e".into(),
        Namespaces: vec![
            LinuxNamespace {
                Type: "mount".into(),
                ..Default::default()
            },
            LinuxNamespace {
                Type: "network".into(),
                Path: "/var/run/netns/cni-1".into(),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let spec = Spec {
        Version: "1.1.0".into(),
        Process: MessageField::some(process),
        Root: MessageField::some(Root {
            Path: ROOTFS.into(),
            Readonly: true,
            ..Default::default()
        }),
        Hostname: "web-0".into(),
        Mounts: vec![Mount {
            destination: "/proc".into(),
            source: "proc".into(),
            type_: "proc".into(),
            options: strings(&["nosuid", "noexec", "nodev"]),
            ..Default::default()
        }],
        Annotations: HashMap::from([(
            "io.kubernetes.cri.container-type".to_string(),
            "container".to_string(),
        )]),
        Linux: MessageField::some(linux),
        ..Default::default()
    };
    CreateContainerRequest {
        container_id: CID.into(),
        exec_id: CID.into(),
        string_user: MessageField::some(StringUser {
            uid: "1000".into(),
            gid: "1000".into(),
            additionalGids: strings(&["10"]),
            ..Default::default()
        }),
        devices: vec![Device {
            id: "0000:00:04.0".into(),
            type_: "blk".into(),
            vm_path: "/dev/vdb".into(),
            container_path: "/dev/data".into(),
            options: strings(&["ro"]),
            ..Default::default()
        }],
        storages: vec![Storage {
            driver: "image_guest_pull".into(),
            driver_options: strings(&[PULL_OPTION]),
            source: IMAGE.into(),
            fstype: "overlay".into(),
            options: strings(&["ro"]),
            mount_point: ROOTFS.into(),
            fs_group: MessageField::some(FSGroup {
                group_id: 2000,
                group_change_policy: FSGroupChangePolicy::OnRootMismatch.into(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        OCI: MessageField::some(spec),
        sandbox_pidns: true,
        ..Default::default()
    }
}

fn create_container_bytes() -> Vec<u8> {
    let process = [
        // Terminal (1) and ConsoleSize (2) are unset.
        message(3, &[uint(1, 1000), uint(2, 1000), packed(3, &[10, 1000])]),
        string(4, "/bin/sh"),
        string(4, "-c"),
        string(4, "echo hi"),
        string(5, "PATH=/usr/bin:/bin"),
        string(5, "HOME=/home/app"),
        string(6, "/srv"),
    ];
    let linux = [
        string(5, "/kubepods/pod1/9f2c1d0e"),
        message(6, &[string(1, "mount")]),
        message(
            6,
            &[string(1, "network"), string(2, "/var/run/netns/cni-1")],
        ),
    ];
    let spec = [
        string(1, "1.1.0"),
        message(2, &process),
        message(3, &[string(1, ROOTFS), uint(2, 1)]),
        string(4, "web-0"),
        message(
            5,
            &[
                string(1, "/proc"),
                string(2, "proc"),
                string(3, "proc"),
                string(4, "nosuid"),
                string(4, "noexec"),
                string(4, "nodev"),
            ],
        ),
        map_entry(
            7,
            "io.kubernetes.cri.container-type",
            string(2, "container"),
        ),
        message(8, &linux),
    ];
    let storage = [
        string(1, "image_guest_pull"),
        string(2, PULL_OPTION),
        string(3, IMAGE),
        string(4, "overlay"),
        string(5, "ro"),
        string(6, ROOTFS),
        // FSGroup: group_id is field 2, the policy enum field 3.
        message(7, &[uint(2, 2000), uint(3, 1)]),
    ];
    let device = [
        string(1, "0000:00:04.0"),
        string(2, "blk"),
        string(3, "/dev/vdb"),
        string(4, "/dev/data"),
        string(5, "ro"),
    ];
    [
        string(1, CID),
        string(2, CID),
        message(3, &[string(1, "1000"), string(2, "1000"), string(3, "10")]),
        message(4, &device),
        message(5, &storage),
        message(6, &spec),
        uint(7, 1),
    ]
    .concat()
}

#[test]
fn create_container_request_matches_kata_numbering() {
    let bytes = create_container_request()
        .write_to_bytes()
        .expect("encode CreateContainerRequest");
    assert_eq!(bytes, create_container_bytes());
}

#[test]
fn create_container_request_decodes_from_kata_bytes() {
    let req = CreateContainerRequest::parse_from_bytes(&create_container_bytes())
        .expect("decode CreateContainerRequest");
    assert_eq!(req, create_container_request());

    // Spot-check the fields the agent acts on, through the decoded value.
    assert_eq!(req.container_id, CID);
    assert!(req.sandbox_pidns);
    let storage = &req.storages[0];
    assert_eq!(storage.driver, "image_guest_pull");
    assert_eq!(storage.source, IMAGE);
    assert_eq!(storage.mount_point, ROOTFS);
    assert_eq!(storage.driver_options, [PULL_OPTION]);
    assert_eq!(
        storage.fs_group.group_change_policy.enum_value(),
        Ok(FSGroupChangePolicy::OnRootMismatch)
    );
    let spec = req.OCI.as_ref().expect("OCI spec");
    let process = spec.Process.as_ref().expect("process");
    assert_eq!(process.Args, ["/bin/sh", "-c", "echo hi"]);
    assert_eq!(process.Cwd, "/srv");
    assert_eq!(process.User.AdditionalGids, [10, 1000]);
    assert_eq!(spec.Mounts[0].type_, "proc");
    assert_eq!(spec.Linux.Namespaces[1].Path, "/var/run/netns/cni-1");
    assert_eq!(
        spec.Annotations["io.kubernetes.cri.container-type"],
        "container"
    );
}

#[test]
fn create_container_request_keeps_fields_it_does_not_know() {
    // A newer shim may send fields past ours (here number 12, a varint);
    // the known ones must still decode and the unknown one survive re-encoding.
    let mut bytes = create_container_bytes();
    bytes.extend(uint(12, 7));
    let req = CreateContainerRequest::parse_from_bytes(&bytes).expect("decode with extra field");
    assert_eq!(req.container_id, CID);
    assert_eq!(req.storages.len(), 1);
    assert_eq!(req.write_to_bytes().expect("re-encode"), bytes);
}

#[test]
fn truncated_or_overlong_input_is_an_error_not_a_panic() {
    // Every cut lands inside a field: the first tag, container_id's length or
    // text, the OCI spec (the last field but one), sandbox_pidns's value.
    let bytes = create_container_bytes();
    for cut in [1, 2, 5, bytes.len() - 3, bytes.len() - 1] {
        assert!(
            CreateContainerRequest::parse_from_bytes(&bytes[..cut]).is_err(),
            "{cut} bytes of {} decoded",
            bytes.len()
        );
    }
    // A length prefix that runs past the end of the buffer.
    assert!(CreateContainerRequest::parse_from_bytes(&[0x0a, 0x40, b'a']).is_err());
    // A varint that never ends.
    assert!(WaitProcessResponse::parse_from_bytes(&[0x08, 0xff, 0xff]).is_err());
}

fn exec_process_request() -> ExecProcessRequest {
    ExecProcessRequest {
        container_id: CID.into(),
        exec_id: "exec-7".into(),
        string_user: MessageField::some(StringUser {
            uid: "app".into(),
            gid: "app".into(),
            ..Default::default()
        }),
        process: MessageField::some(Process {
            Terminal: true,
            ConsoleSize: MessageField::some(ConsoleBox {
                Height: 24,
                Width: 80,
                ..Default::default()
            }),
            User: MessageField::some(User {
                UID: 1000,
                GID: 1000,
                ..Default::default()
            }),
            Args: strings(&["/bin/sh"]),
            Env: strings(&["TERM=xterm"]),
            Cwd: "/".into(),
            Capabilities: MessageField::some(LinuxCapabilities {
                Bounding: strings(&["CAP_CHOWN", "CAP_KILL"]),
                Inheritable: strings(&["CAP_KILL"]),
                Ambient: strings(&["CAP_NET_BIND_SERVICE"]),
                ..Default::default()
            }),
            Rlimits: vec![POSIXRlimit {
                Type: "RLIMIT_NOFILE".into(),
                Hard: 1_048_576,
                Soft: 1024,
                ..Default::default()
            }],
            NoNewPrivileges: true,
            OOMScoreAdj: -998,
            ..Default::default()
        }),
        stdin_port: 1030,
        stdout_port: 1031,
        stderr_port: 1032,
        ..Default::default()
    }
}

fn exec_process_bytes() -> Vec<u8> {
    let process = [
        uint(1, 1),
        message(2, &[uint(1, 24), uint(2, 80)]),
        message(3, &[uint(1, 1000), uint(2, 1000)]),
        string(4, "/bin/sh"),
        string(5, "TERM=xterm"),
        string(6, "/"),
        message(
            7,
            &[
                string(1, "CAP_CHOWN"),
                string(1, "CAP_KILL"),
                string(3, "CAP_KILL"),
                string(5, "CAP_NET_BIND_SERVICE"),
            ],
        ),
        message(
            8,
            &[
                string(1, "RLIMIT_NOFILE"),
                uint(2, 1_048_576),
                uint(3, 1024),
            ],
        ),
        uint(9, 1),
        int(11, -998),
    ];
    [
        string(1, CID),
        string(2, "exec-7"),
        message(3, &[string(1, "app"), string(2, "app")]),
        message(4, &process),
        uint(5, 1030),
        uint(6, 1031),
        uint(7, 1032),
    ]
    .concat()
}

#[test]
fn exec_process_request_matches_kata_numbering() {
    let bytes = exec_process_request()
        .write_to_bytes()
        .expect("encode ExecProcessRequest");
    assert_eq!(bytes, exec_process_bytes());

    let back = ExecProcessRequest::parse_from_bytes(&bytes).expect("decode ExecProcessRequest");
    assert_eq!(back, exec_process_request());
    assert_eq!(back.process.OOMScoreAdj, -998);
    assert_eq!(back.process.ConsoleSize.Width, 80);
    assert_eq!(back.stderr_port, 1032);
}

#[test]
fn signal_process_request_bytes() {
    // Empty exec_id (every process of the container) is not on the wire.
    let req = SignalProcessRequest {
        container_id: "c1".into(),
        signal: 9,
        ..Default::default()
    };
    let expected = [0x0a, 0x02, b'c', b'1', 0x18, 0x09];
    assert_eq!(req.write_to_bytes().expect("encode"), expected);
    assert_eq!([string(1, "c1"), uint(3, 9)].concat(), expected);

    let back = SignalProcessRequest::parse_from_bytes(&expected).expect("decode");
    assert_eq!(back.container_id, "c1");
    assert_eq!(back.exec_id, "");
    assert_eq!(back.signal, 9);
}

#[test]
fn read_stream_request_bytes() {
    let req = ReadStreamRequest {
        container_id: "c1".into(),
        exec_id: "e1".into(),
        len: 32768,
        ..Default::default()
    };
    let expected = [
        0x0a, 0x02, b'c', b'1', 0x12, 0x02, b'e', b'1', 0x18, 0x80, 0x80, 0x02,
    ];
    assert_eq!(req.write_to_bytes().expect("encode"), expected);

    let back = ReadStreamRequest::parse_from_bytes(&expected).expect("decode");
    assert_eq!(back, req);
    assert_eq!(back.len, 32768);
}

#[test]
fn wait_process_response_bytes() {
    // Killed by SIGKILL: 128 + 9.
    let killed = WaitProcessResponse {
        status: 137,
        ..Default::default()
    };
    assert_eq!(killed.write_to_bytes().expect("encode"), [0x08, 0x89, 0x01]);
    // int32, not sint32: a negative status takes ten bytes.
    let negative = WaitProcessResponse {
        status: -1,
        ..Default::default()
    };
    let negative_bytes = [
        0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
    ];
    assert_eq!(negative.write_to_bytes().expect("encode"), negative_bytes);

    assert_eq!(
        WaitProcessResponse::parse_from_bytes(&[0x08, 0x89, 0x01])
            .expect("decode")
            .status,
        137
    );
    assert_eq!(
        WaitProcessResponse::parse_from_bytes(&negative_bytes)
            .expect("decode")
            .status,
        -1
    );
    // Exit status 0 is the empty message.
    assert_eq!(
        WaitProcessResponse::default()
            .write_to_bytes()
            .expect("encode"),
        Vec::<u8>::new()
    );
}

fn update_interface_request() -> UpdateInterfaceRequest {
    UpdateInterfaceRequest {
        interface: MessageField::some(Interface {
            device: "eth0".into(),
            name: "eth0".into(),
            IPAddresses: vec![
                IPAddress {
                    family: IPFamily::v4.into(),
                    address: "10.244.1.7".into(),
                    mask: "24".into(),
                    ..Default::default()
                },
                IPAddress {
                    family: IPFamily::v6.into(),
                    address: "fd00::7".into(),
                    mask: "64".into(),
                    ..Default::default()
                },
            ],
            mtu: 1450,
            hwAddr: "0a:58:0a:f4:01:07".into(),
            devicePath: "02/00".into(),
            type_: "veth".into(),
            raw_flags: 4163,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn update_interface_request_matches_kata_numbering() {
    let interface = [
        string(1, "eth0"),
        string(2, "eth0"),
        // v4 is the enum's zero value, so it is not on the wire.
        message(3, &[string(2, "10.244.1.7"), string(3, "24")]),
        message(3, &[uint(1, 1), string(2, "fd00::7"), string(3, "64")]),
        uint(4, 1450),
        string(5, "0a:58:0a:f4:01:07"),
        string(6, "02/00"),
        string(7, "veth"),
        uint(8, 4163),
    ];
    let expected = message(1, &interface);
    let req = update_interface_request();
    assert_eq!(req.write_to_bytes().expect("encode"), expected);

    let back = UpdateInterfaceRequest::parse_from_bytes(&expected).expect("decode");
    assert_eq!(back, req);
    let addrs = &back.interface.IPAddresses;
    assert_eq!(addrs[0].family.enum_value(), Ok(IPFamily::v4));
    assert_eq!(addrs[1].family.enum_value(), Ok(IPFamily::v6));
    assert_eq!(addrs[1].address, "fd00::7");
    assert_eq!(back.interface.mtu, 1450);
    assert_eq!(back.interface.raw_flags, 4163);
}

fn stats_bytes() -> Vec<u8> {
    let cpu = [
        message(
            1,
            &[
                uint(1, 5_000_000),
                packed(2, &[3_000_000, 2_000_000]),
                uint(3, 1_000_000),
                uint(4, 4_000_000),
            ],
        ),
        message(2, &[uint(1, 10), uint(2, 2), uint(3, 150_000)]),
    ];
    let memory = [
        uint(1, 4096),
        message(
            2,
            &[
                uint(1, 1 << 20),
                uint(2, 2 << 20),
                uint(3, 5),
                uint(4, 64 << 20),
            ],
        ),
        map_entry(6, "rss", uint(2, 8192)),
    ];
    let cgroup = [
        message(1, &cpu),
        message(2, &memory),
        message(3, &[uint(1, 3), uint(2, 100)]),
        map_entry(
            5,
            "2MB",
            message(2, &[uint(1, 2 << 20), uint(2, 4 << 20), uint(3, 1)]),
        ),
    ];
    let network = [
        string(1, "eth0"),
        uint(2, 1234),
        uint(5, 1),
        uint(6, 5678),
        uint(9, 2),
    ];
    [message(1, &cgroup), message(2, &network)].concat()
}

fn stats_response() -> StatsContainerResponse {
    StatsContainerResponse {
        cgroup_stats: MessageField::some(CgroupStats {
            cpu_stats: MessageField::some(CpuStats {
                cpu_usage: MessageField::some(CpuUsage {
                    total_usage: 5_000_000,
                    percpu_usage: vec![3_000_000, 2_000_000],
                    usage_in_kernelmode: 1_000_000,
                    usage_in_usermode: 4_000_000,
                    ..Default::default()
                }),
                throttling_data: MessageField::some(ThrottlingData {
                    periods: 10,
                    throttled_periods: 2,
                    throttled_time: 150_000,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            memory_stats: MessageField::some(MemoryStats {
                cache: 4096,
                usage: MessageField::some(MemoryData {
                    usage: 1 << 20,
                    max_usage: 2 << 20,
                    failcnt: 5,
                    limit: 64 << 20,
                    ..Default::default()
                }),
                stats: HashMap::from([("rss".to_string(), 8192)]),
                ..Default::default()
            }),
            pids_stats: MessageField::some(PidsStats {
                current: 3,
                limit: 100,
                ..Default::default()
            }),
            hugetlb_stats: HashMap::from([(
                "2MB".to_string(),
                HugetlbStats {
                    usage: 2 << 20,
                    max_usage: 4 << 20,
                    failcnt: 1,
                    ..Default::default()
                },
            )]),
            ..Default::default()
        }),
        network_stats: vec![NetworkStats {
            name: "eth0".into(),
            rx_bytes: 1234,
            rx_dropped: 1,
            tx_bytes: 5678,
            tx_dropped: 2,
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn stats_container_response_matches_kata_numbering() {
    // Each map holds one entry, so the encoding has one possible order.
    let built = stats_response();
    assert_eq!(built.write_to_bytes().expect("encode stats"), stats_bytes());

    let back = StatsContainerResponse::parse_from_bytes(&stats_bytes()).expect("decode stats");
    assert_eq!(back, built);
    let cg = back.cgroup_stats.as_ref().expect("cgroup stats");
    assert_eq!(cg.cpu_stats.cpu_usage.percpu_usage, [3_000_000, 2_000_000]);
    assert_eq!(cg.cpu_stats.throttling_data.throttled_time, 150_000);
    assert_eq!(cg.memory_stats.usage.failcnt, 5);
    assert_eq!(cg.memory_stats.stats["rss"], 8192);
    assert_eq!(cg.pids_stats.limit, 100);
    assert_eq!(cg.hugetlb_stats["2MB"].max_usage, 4 << 20);
    let net = &back.network_stats[0];
    assert_eq!(net.name, "eth0");
    assert_eq!((net.rx_bytes, net.rx_dropped), (1234, 1));
    assert_eq!((net.tx_bytes, net.tx_dropped), (5678, 2));
}

#[test]
fn health_check_response_bytes() {
    let serving = HealthCheckResponse {
        status: health_check_response::ServingStatus::SERVING.into(),
        ..Default::default()
    };
    assert_eq!(serving.write_to_bytes().expect("encode"), [0x08, 0x01]);
    let back = HealthCheckResponse::parse_from_bytes(&[0x08, 0x02]).expect("decode");
    assert_eq!(
        back.status.enum_value(),
        Ok(health_check_response::ServingStatus::NOT_SERVING)
    );
}
