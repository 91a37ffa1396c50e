//! `containerd-shim-cocoon-v2`: containerd's runtime v2 shim for
//! confidential pods. containerd starts one shim per pod (grouped by the
//! CRI sandbox id); the shim boots the pod's VM with the hypervisor driver
//! and maps containerd's task API onto the Kata agent inside it. Images
//! are pulled inside the VM, so the shim never holds a decrypted layer or
//! a secret, and it does not link the guest's code.

pub mod config;
pub mod events;
pub mod guard;
pub mod shim;
pub mod spec;
pub mod stats;
pub mod stdio;
pub mod task;

/// The runtime's name as containerd knows it (`runtime_type`).
pub const RUNTIME: &str = "io.containerd.cocoon.v2";

/// First argument that makes the shim binary the TCP relay of a pod's
/// host-port forward (QEMU runs one per guest connection).
pub const RELAY_ARG: &str = "__tcp-relay";

/// First argument that makes the shim binary the guard of a shim (see
/// [`guard`]), followed by the shim's socket.
pub const GUARD_ARG: &str = "__guard";
