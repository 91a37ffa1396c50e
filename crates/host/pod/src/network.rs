//! A pod's network namespace (made by CNI) carried into its VM, as Kata
//! does with its TC filter mode: a tap device in the namespace takes the
//! guest's NIC, and two `tc` redirects mirror every frame between it and
//! the namespace's interface, so the guest answers on the pod IP with the
//! interface's MAC. The namespace's own stack sees nothing any more.
//! Uses `ip` and `tc` (iproute2) run inside the namespace with `nsenter`.

use crate::{AgentClient, PodError};
use cocoon_guest_protos::kata::{agent, types};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The interface CNI creates in a pod's namespace.
pub const POD_IFACE: &str = "eth0";
/// The tap device made beside it for the VM.
pub const TAP: &str = "tap0_cocoon";

/// What the guest NIC takes over from the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    /// The namespace.
    pub netns: PathBuf,
    /// The tap device in it.
    pub tap: String,
    /// The interface's MAC address.
    pub mac: String,
    /// Its MTU.
    pub mtu: u32,
    /// Its IPv4 address and prefix length.
    pub address: Option<(String, u8)>,
    /// Routes through a gateway (destination, gateway).
    pub routes: Vec<(String, String)>,
}

fn in_ns(netns: &Path, prog: &str, args: &[&str]) -> Result<String, PodError> {
    let o = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg(prog)
        .args(args)
        .output()
        .map_err(|e| PodError::Network(format!("running {prog} in {}: {e}", netns.display())))?;
    if !o.status.success() {
        return Err(PodError::Network(format!(
            "{prog} {} in {}: {}",
            args.join(" "),
            netns.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

#[derive(Deserialize)]
struct Link {
    mtu: u32,
    address: String,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Deserialize)]
struct AddrInfo {
    family: String,
    local: String,
    prefixlen: u8,
}

#[derive(Deserialize)]
struct Route {
    dst: String,
    #[serde(default)]
    gateway: Option<String>,
}

/// An interface's MAC, MTU and IPv4 address with its prefix length.
type LinkInfo = (String, u32, Option<(String, u8)>);

/// Parses `ip -j addr show dev IFACE`.
fn parse_link(json: &str) -> Result<LinkInfo, PodError> {
    let links: Vec<Link> = serde_json::from_str(json)
        .map_err(|e| PodError::Network(format!("reading the pod interface: {e}")))?;
    let l = links
        .into_iter()
        .next()
        .ok_or_else(|| PodError::Network(format!("the pod namespace has no {POD_IFACE}")))?;
    let addr = l
        .addr_info
        .into_iter()
        .find(|a| a.family == "inet")
        .map(|a| (a.local, a.prefixlen));
    Ok((l.address, l.mtu, addr))
}

/// Parses `ip -j -4 route show dev IFACE`: the routes through a gateway.
fn parse_routes(json: &str) -> Result<Vec<(String, String)>, PodError> {
    let routes: Vec<Route> = serde_json::from_str(json)
        .map_err(|e| PodError::Network(format!("reading the pod routes: {e}")))?;
    Ok(routes
        .into_iter()
        .filter_map(|r| r.gateway.map(|g| (r.dst, g)))
        .collect())
}

/// Reads the namespace's interface and puts a tap device beside it: what
/// the VM needs to start. [`mirror`] then connects the two. Idempotent.
pub fn attach(netns: &Path) -> Result<PodNetwork, PodError> {
    let (mac, mtu, address) = parse_link(&in_ns(
        netns,
        "ip",
        &["-j", "addr", "show", "dev", POD_IFACE],
    )?)?;
    let routes = parse_routes(&in_ns(
        netns,
        "ip",
        &["-j", "-4", "route", "show", "dev", POD_IFACE],
    )?)?;
    if in_ns(netns, "ip", &["link", "show", "dev", TAP]).is_err() {
        in_ns(netns, "ip", &["tuntap", "add", "dev", TAP, "mode", "tap"])?;
    }
    Ok(PodNetwork {
        netns: netns.to_path_buf(),
        tap: TAP.into(),
        mac,
        mtu,
        address,
        routes,
    })
}

/// Mirrors every frame between the pod's interface and the tap device of
/// `net`, both ways, then brings the tap up at the interface's MTU. It may
/// run while the VM boots: the guest's NIC comes up only once its agent
/// is told the pod's addresses. Idempotent for the filters.
pub fn mirror(net: &PodNetwork) -> Result<(), PodError> {
    let netns = net.netns.as_path();
    // The redirects first: once the tap is up, every frame from the VM
    // goes to the pod's interface, never into the namespace's own stack.
    for (from, to) in [(POD_IFACE, net.tap.as_str()), (net.tap.as_str(), POD_IFACE)] {
        // A fresh ingress qdisc drops any earlier filter.
        let _ = in_ns(netns, "tc", &["qdisc", "del", "dev", from, "ingress"]);
        in_ns(netns, "tc", &["qdisc", "add", "dev", from, "ingress"])?;
        in_ns(
            netns,
            "tc",
            &[
                "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match",
                "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
            ],
        )?;
    }
    let mtu_s = net.mtu.to_string();
    in_ns(
        netns,
        "ip",
        &["link", "set", "dev", &net.tap, "mtu", &mtu_s, "up"],
    )?;
    Ok(())
}

impl PodNetwork {
    /// The VM's NIC on this network.
    pub fn nic(&self) -> cocoon_hypervisor::PodNic {
        cocoon_hypervisor::PodNic {
            netns: self.netns.clone(),
            tap: self.tap.clone(),
            mac: self.mac.clone(),
        }
    }
}

impl AgentClient {
    /// Gives the guest NIC on the pod network the pod's address and
    /// routes (the pod's default route among them).
    pub async fn setup_pod_network(&self, net: &PodNetwork) -> Result<(), PodError> {
        let t = crate::ctx(std::time::Duration::from_secs(30));
        let iface = types::Interface {
            hwAddr: net.mac.clone(),
            name: POD_IFACE.into(),
            mtu: u64::from(net.mtu),
            IPAddresses: net
                .address
                .iter()
                .map(|(a, p)| types::IPAddress {
                    address: a.clone(),
                    mask: p.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        self.agent
            .update_interface(
                t.clone(),
                &agent::UpdateInterfaceRequest {
                    interface: Some(iface).into(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| PodError::Agent("UpdateInterface", crate::describe(e)))?;
        if net.routes.is_empty() {
            return Ok(());
        }
        let routes = net
            .routes
            .iter()
            .map(|(dest, gw)| types::Route {
                dest: dest.clone(),
                gateway: gw.clone(),
                ..Default::default()
            })
            .collect();
        self.agent
            .update_routes(
                t,
                &agent::UpdateRoutesRequest {
                    routes: Some(agent::Routes {
                        Routes: routes,
                        ..Default::default()
                    })
                    .into(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| PodError::Agent("UpdateRoutes", crate::describe(e)))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iproute2_json_is_read_for_the_guest_nic() {
        let (mac, mtu, addr) = parse_link(
            r#"[{"ifindex":2,"ifname":"eth0","mtu":1450,"address":"0a:58:0a:58:4d:05","addr_info":[{"family":"inet6","local":"fe80::1","prefixlen":64},{"family":"inet","local":"10.88.77.5","prefixlen":24}]}]"#,
        )
        .unwrap();
        assert_eq!((mac.as_str(), mtu), ("0a:58:0a:58:4d:05", 1450));
        assert_eq!(addr, Some(("10.88.77.5".into(), 24)));
        let routes = parse_routes(
            r#"[{"dst":"default","gateway":"10.88.77.1","dev":"eth0"},{"dst":"10.88.77.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"10.88.77.5"}]"#,
        )
        .unwrap();
        assert_eq!(routes, vec![("default".into(), "10.88.77.1".into())]);
        assert!(parse_link("[]").is_err());
        assert!(parse_link("not json").is_err());
    }
}
