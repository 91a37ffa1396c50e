//! A pod network namespace carried toward a VM, for real: a namespace of
//! this test's own with an `eth0` (a veth end, as CNI leaves one; its peer
//! stays in the namespace here), the tap put beside it, and the `tc`
//! mirroring between them. Needs root and iproute2 (scripts/test runs as
//! root and installs it).

use cocoon_pod::network::{POD_IFACE, TAP, attach, mirror};
use std::path::PathBuf;
use std::process::Command;

fn run(args: &[&str]) -> String {
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (install iproute2)", args[0]));
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The MAC the pod's interface gets here.
const MAC: &str = "02:c0:c0:00:00:05";

/// A network namespace, removed on drop.
struct Netns(String);

impl Netns {
    fn new() -> Self {
        let name = format!("cocoon-test-net-{}", std::process::id());
        // Left by a killed run whose pid this one reuses.
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        run(&["ip", "netns", "add", &name]);
        let ns = Self(name);
        ns.exec(&[
            "ip", "link", "add", POD_IFACE, "type", "veth", "peer", "name", "peer0",
        ]);
        ns.exec(&["ip", "link", "set", "peer0", "up"]);
        ns.exec(&["ip", "link", "set", POD_IFACE, "address", MAC]);
        ns.exec(&["ip", "link", "set", POD_IFACE, "mtu", "1400", "up"]);
        ns.exec(&["ip", "addr", "add", "10.99.0.5/24", "dev", POD_IFACE]);
        ns.exec(&["ip", "route", "add", "default", "via", "10.99.0.1"]);
        ns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.0)
    }

    fn exec(&self, args: &[&str]) -> String {
        let mut a = vec!["ip", "netns", "exec", &self.0];
        a.extend_from_slice(args);
        run(&a)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn the_tap_is_made_before_the_vm_and_mirrored_while_it_boots() {
    let ns = Netns::new();
    // What the VM needs to start: the interface read, the tap made, and
    // nothing mirrored yet.
    let net = attach(&ns.path()).unwrap();
    assert_eq!(net.mtu, 1400);
    assert_eq!(net.address, Some(("10.99.0.5".into(), 24)));
    assert_eq!(net.routes, vec![("default".into(), "10.99.0.1".into())]);
    assert_eq!(net.mac, MAC);
    let tap = ns.exec(&["ip", "link", "show", "dev", TAP]);
    assert!(
        !tap.contains("mtu 1400") && tap.contains("state DOWN"),
        "{tap}"
    );
    for dev in [POD_IFACE, TAP] {
        let f = ns.exec(&["tc", "filter", "show", "dev", dev, "ingress"]);
        assert!(f.trim().is_empty(), "{dev}: {f}");
    }
    // Then the tap comes up at eth0's MTU with frames redirected both ways.
    mirror(&net).unwrap();
    let tap = ns.exec(&["ip", "link", "show", "dev", TAP]);
    assert!(tap.contains("mtu 1400") && tap.contains(",UP"), "{tap}");
    for (from, to) in [(POD_IFACE, TAP), (TAP, POD_IFACE)] {
        let f = ns.exec(&["tc", "filter", "show", "dev", from, "ingress"]);
        assert!(
            f.contains("mirred") && f.contains(&format!("to device {to}")),
            "{from}: {f}"
        );
    }
    // Again: the same two filters, not four.
    attach(&ns.path()).unwrap();
    mirror(&net).unwrap();
    for dev in [POD_IFACE, TAP] {
        let f = ns.exec(&["tc", "filter", "show", "dev", dev, "ingress"]);
        assert_eq!(f.matches("mirred").count(), 1, "{dev}: {f}");
    }
    // A tap gone by the time it is mirrored fails with iproute2's words.
    ns.exec(&["ip", "link", "del", TAP]);
    let e = mirror(&net).unwrap_err().to_string();
    assert!(e.contains(TAP) && e.contains("tc"), "{e}");
}
