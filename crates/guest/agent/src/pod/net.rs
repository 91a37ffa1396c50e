//! Guest networking as the host describes it (`UpdateInterface`,
//! `UpdateRoutes`): IPv4 addresses, MTU, link state and routes, set with
//! the classic socket ioctls (no netlink library needed for that subset).
//! IPv6 is refused with a clear error. Also: the loopback device, the
//! hostname, and the loopback forwards that let a guest reach a service
//! on the host's loopback under the same `127.0.0.1:PORT` name.

use super::sandbox::SandboxError;
use cocoon_guest_protos::kata::types;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

fn io(what: String) -> impl Fn(std::io::Error) -> SandboxError {
    move |e| SandboxError::Failed(format!("{what}: {e}"))
}

fn socket() -> Result<OwnedFd, SandboxError> {
    // SAFETY: socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io("socket".into())(std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> Result<libc::ifreq, SandboxError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('/') {
        return Err(SandboxError::Invalid(format!(
            "'{name}' is not a network interface name"
        )));
    }
    // SAFETY: ifreq is plain data; all zero is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(r)
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl<T>(
    fd: &OwnedFd,
    req: libc::c_ulong,
    arg: &mut T,
    what: String,
) -> Result<(), SandboxError> {
    // SAFETY: `arg` is the structure this request reads or writes.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as *mut T) };
    if rc != 0 {
        return Err(io(what)(std::io::Error::last_os_error()));
    }
    Ok(())
}

fn set_up(fd: &OwnedFd, name: &str) -> Result<(), SandboxError> {
    let mut r = ifreq(name)?;
    ioctl(fd, libc::SIOCGIFFLAGS, &mut r, format!("flags of {name}"))?;
    // SAFETY: the flags member is what SIOCGIFFLAGS filled.
    unsafe { r.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    ioctl(
        fd,
        libc::SIOCSIFFLAGS,
        &mut r,
        format!("bringing {name} up"),
    )
}

/// Brings the loopback device up (the kernel leaves it down).
pub fn loopback_up() -> Result<(), SandboxError> {
    set_up(&socket()?, "lo")
}

/// Sets the guest's hostname (CreateSandbox); empty leaves it.
pub fn set_hostname(name: &str) -> Result<(), SandboxError> {
    if name.is_empty() {
        return Ok(());
    }
    if name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(SandboxError::Invalid(format!("'{name}' is not a hostname")));
    }
    // SAFETY: pointer and length of a live buffer.
    let rc = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    if rc != 0 {
        return Err(io("sethostname".into())(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Whether `link` is a loopback device (IFF_LOOPBACK in its flags).
fn is_loopback(link: &str) -> bool {
    std::fs::read_to_string(Path::new("/sys/class/net").join(link).join("flags"))
        .ok()
        .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|f| f & libc::IFF_LOOPBACK as u32 != 0)
        || link == "lo"
}

/// The guest link the host means: by MAC address when given, else by
/// name. Never the loopback device: the guest's own services live there.
fn find_link(iface: &types::Interface) -> Result<String, SandboxError> {
    let link = find_any_link(iface)?;
    if is_loopback(&link) {
        return Err(SandboxError::Invalid(format!(
            "{link} is the loopback device; the host cannot configure it"
        )));
    }
    Ok(link)
}

fn find_any_link(iface: &types::Interface) -> Result<String, SandboxError> {
    let mac = iface.hwAddr.to_ascii_lowercase();
    if !mac.is_empty() {
        let dir = std::fs::read_dir("/sys/class/net").map_err(io("/sys/class/net".into()))?;
        for e in dir.flatten() {
            let addr = std::fs::read_to_string(e.path().join("address")).unwrap_or_default();
            if addr.trim() == mac {
                return Ok(e.file_name().to_string_lossy().into_owned());
            }
        }
        return Err(SandboxError::NotFound(format!(
            "no network interface has address {mac}"
        )));
    }
    let name = if iface.device.is_empty() {
        &iface.name
    } else {
        &iface.device
    };
    if Path::new("/sys/class/net").join(name).exists() && !name.is_empty() && !name.contains('/') {
        Ok(name.clone())
    } else {
        Err(SandboxError::NotFound(format!(
            "no network interface named '{name}'"
        )))
    }
}

fn prefix_mask(prefix: &str) -> Result<Ipv4Addr, SandboxError> {
    let p: u32 =
        prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(|| {
            SandboxError::Invalid(format!("'{prefix}' is not an IPv4 prefix length"))
        })?;
    Ok(Ipv4Addr::from(u32::MAX.checked_shl(32 - p).unwrap_or(0)))
}

fn ipv4(s: &str) -> Result<Ipv4Addr, SandboxError> {
    s.parse()
        .map_err(|_| SandboxError::Invalid(format!("'{s}' is not an IPv4 address")))
}

/// How long UpdateInterface waits for its link to appear (the NIC driver
/// loads while the agent already serves).
const LINK_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// UpdateInterface: MTU, IPv4 addresses (the first one; the ioctls set
/// one per link), up.
pub async fn update_interface(iface: &types::Interface) -> Result<(), SandboxError> {
    let t = std::time::Instant::now();
    let link = loop {
        match find_link(iface) {
            Ok(l) => break l,
            Err(SandboxError::NotFound(_)) if t.elapsed() < LINK_WAIT => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    };
    // Everything checked before the first change to the link.
    if iface.IPAddresses.len() > 1 {
        return Err(SandboxError::Unsupported(format!(
            "{} addresses for {link}: one IPv4 address per interface is supported",
            iface.IPAddresses.len()
        )));
    }
    let mtu = i32::try_from(iface.mtu)
        .map_err(|_| SandboxError::Invalid(format!("MTU {} is too large", iface.mtu)))?;
    let address = match iface.IPAddresses.first() {
        Some(a) if a.family.value() != types::IPFamily::v4 as i32 => {
            return Err(SandboxError::Unsupported(format!(
                "IPv6 address {} is not supported",
                a.address
            )));
        }
        Some(a) => Some((ipv4(&a.address)?, prefix_mask(&a.mask)?)),
        None => None,
    };
    let fd = socket()?;
    if mtu > 0 {
        let mut r = ifreq(&link)?;
        r.ifr_ifru.ifru_mtu = mtu;
        ioctl(&fd, libc::SIOCSIFMTU, &mut r, format!("MTU of {link}"))?;
    }
    if let Some((ip, mask)) = address {
        let mut r = ifreq(&link)?;
        r.ifr_ifru.ifru_addr = sockaddr(ip);
        ioctl(&fd, libc::SIOCSIFADDR, &mut r, format!("address of {link}"))?;
        let mut r = ifreq(&link)?;
        r.ifr_ifru.ifru_netmask = sockaddr(mask);
        ioctl(
            &fd,
            libc::SIOCSIFNETMASK,
            &mut r,
            format!("netmask of {link}"),
        )?;
    }
    set_up(&fd, &link)?;
    tracing::info!(link = %link, addresses = iface.IPAddresses.len(), "interface configured");
    Ok(())
}

/// UpdateRoutes: adds each IPv4 route (`default` or `A.B.C.D/N`, with a
/// gateway or on a device).
pub fn update_routes(routes: &[types::Route]) -> Result<(), SandboxError> {
    let fd = socket()?;
    for rt in routes {
        if rt.family.value() != types::IPFamily::v4 as i32 {
            return Err(SandboxError::Unsupported(format!(
                "IPv6 route {} is not supported",
                rt.dest
            )));
        }
        if !rt.device.is_empty() && is_loopback(&rt.device) {
            return Err(SandboxError::Invalid(
                "routes on the loopback device cannot be changed".into(),
            ));
        }
        let (dst, mask) = match rt.dest.as_str() {
            "" | "default" | "0.0.0.0/0" => (Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED),
            d => match d.split_once('/') {
                Some((a, p)) => (ipv4(a)?, prefix_mask(p)?),
                None => (ipv4(d)?, Ipv4Addr::BROADCAST),
            },
        };
        let gateway = match rt.gateway.as_str() {
            "" => None,
            g => Some(ipv4(g)?),
        };
        if (u32::from(dst) & u32::from(mask)) >> 24 == 127
            || gateway.is_some_and(|g| g.is_loopback())
        {
            return Err(SandboxError::Invalid(format!(
                "route {} would send loopback traffic out of the guest",
                rt.dest
            )));
        }
        // SAFETY: rtentry is plain data; zero is valid.
        let mut e: libc::rtentry = unsafe { std::mem::zeroed() };
        e.rt_dst = sockaddr(dst);
        e.rt_genmask = sockaddr(mask);
        e.rt_flags = libc::RTF_UP;
        if mask == Ipv4Addr::BROADCAST {
            e.rt_flags |= libc::RTF_HOST;
        }
        if let Some(g) = gateway {
            e.rt_gateway = sockaddr(g);
            e.rt_flags |= libc::RTF_GATEWAY;
        }
        let dev;
        if !rt.device.is_empty() {
            ifreq(&rt.device)?;
            dev = std::ffi::CString::new(rt.device.as_str())
                .map_err(|_| SandboxError::Invalid("device name with NUL".into()))?;
            e.rt_dev = dev.as_ptr() as *mut libc::c_char;
        }
        // SAFETY: SIOCADDRT reads the rtentry built above.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCADDRT as _, &mut e) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            // Already there (the kernel adds the link's own subnet).
            if err.raw_os_error() != Some(libc::EEXIST) {
                return Err(io(format!("route {}", rt.dest))(err));
            }
        }
    }
    Ok(())
}

/// Ports a forward may not take: privileged ones and the guest's own
/// loopback services (a host that could answer for the REST API would
/// hand the workload forged secrets).
fn forward_allowed(port: u32) -> bool {
    port >= 1024
        && port <= u32::from(u16::MAX)
        && crate::rest::DEFAULT_BIND
            .rsplit(':')
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            != Some(port)
}

/// Listens on `127.0.0.1:port` in the guest and relays each connection
/// to `target`. Returns once listening.
pub async fn forward_loopback(port: u32, target: &str) -> Result<(), SandboxError> {
    if !forward_allowed(port) {
        return Err(SandboxError::Invalid(format!(
            "port {port} cannot be forwarded (below 1024, or a guest service's)"
        )));
    }
    let to: std::net::SocketAddrV4 = target.parse().map_err(|_| {
        SandboxError::Invalid(format!(
            "forward target '{target}' is not IPv4 a.b.c.d:port"
        ))
    })?;
    if to.ip().is_loopback() || to.ip().is_unspecified() {
        return Err(SandboxError::Invalid(format!(
            "forward target {to} would loop inside the guest"
        )));
    }
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port as u16))
        .await
        .map_err(io(format!("listening on 127.0.0.1:{port}")))?;
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                // Out of descriptors and the like: do not spin.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            tokio::spawn(async move {
                match tokio::net::TcpStream::connect(to).await {
                    Ok(mut out) => {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                    Err(e) => tracing::warn!(port, target = %to, "forward: {e}"),
                }
            });
        }
    });
    tracing::info!(port, target = %to, "loopback port forwarded");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_cannot_take_guest_service_or_privileged_ports() {
        assert!(forward_allowed(5000));
        assert!(!forward_allowed(8006));
        assert!(!forward_allowed(443));
        assert!(!forward_allowed(70000));
    }

    #[tokio::test]
    async fn forward_targets_must_leave_the_guest() {
        for t in ["127.0.0.1:5000", "0.0.0.0:5000", "host:5000", "[::1]:5000"] {
            assert!(
                matches!(
                    forward_loopback(45001, t).await,
                    Err(SandboxError::Invalid(_))
                ),
                "{t}"
            );
        }
    }

    #[test]
    fn prefixes_become_netmasks() {
        assert_eq!(prefix_mask("24").unwrap(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(prefix_mask("0").unwrap(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(prefix_mask("32").unwrap(), Ipv4Addr::BROADCAST);
        assert!(prefix_mask("33").is_err());
        assert!(prefix_mask("x").is_err());
    }

    #[test]
    fn malformed_requests_are_refused_before_any_ioctl() {
        assert!(matches!(ifreq("a/b"), Err(SandboxError::Invalid(_))));
        assert!(matches!(
            ifreq(&"x".repeat(16)),
            Err(SandboxError::Invalid(_))
        ));
        assert!(matches!(
            set_hostname("bad host"),
            Err(SandboxError::Invalid(_))
        ));
        let mut iface = types::Interface::new();
        iface.name = "no-such-link0".into();
        assert!(matches!(find_link(&iface), Err(SandboxError::NotFound(_))));
        iface.hwAddr = "02:00:00:00:00:99".into();
        assert!(matches!(find_link(&iface), Err(SandboxError::NotFound(_))));
        let mut lo = types::Interface::new();
        lo.name = "lo".into();
        assert!(matches!(find_link(&lo), Err(SandboxError::Invalid(_))));
        let mut r = types::Route::new();
        r.dest = "127.0.0.0/8".into();
        r.gateway = "10.0.2.2".into();
        assert!(matches!(update_routes(&[r]), Err(SandboxError::Invalid(_))));
        let mut r = types::Route::new();
        r.dest = "default".into();
        r.device = "lo".into();
        assert!(matches!(update_routes(&[r]), Err(SandboxError::Invalid(_))));
        let mut rt = types::Route::new();
        rt.dest = "10.0.0.0/99".into();
        assert!(matches!(
            update_routes(&[rt]),
            Err(SandboxError::Invalid(_))
        ));
        let mut v6 = types::Route::new();
        v6.family = types::IPFamily::v6.into();
        assert!(matches!(
            update_routes(&[v6]),
            Err(SandboxError::Unsupported(_))
        ));
    }
}
