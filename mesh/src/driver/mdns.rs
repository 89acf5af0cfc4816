//! Discovery on the local link with mDNS (mdns-sd): announce `_ferry._udp.local.` (node id,
//! mesh port, protocol version) and `_quicproquo._udp.local.` (client port, certificate
//! fingerprint, for clients), and browse `_ferry._udp.local.` for neighbours.
//!
//! mdns-sd shares UDP 5353 with OpenWrt's umdns (both set SO_REUSEADDR/SO_REUSEPORT). mDNS does
//! not cross routed hops (Gluon's batman-adv, OSPF meshes); static peers and peer exchange
//! cover those.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ferry_proto::limits::MESH_PROTOCOL_VERSION;
use ferry_proto::types::NodeId;
use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};

use super::MeshHandle;
use crate::core::PeerSource;

/// The mesh service type.
pub const FERRY_SERVICE: &str = "_ferry._udp.local.";
/// The qpq client service type.
pub const QPQ_SERVICE: &str = "_quicproquo._udp.local.";

/// What to announce for clients.
#[derive(Clone, Debug)]
pub struct ClientAnnouncement {
    /// qpq client port.
    pub port: u16,
    /// The certificate fingerprint clients should pin (`SHA256:...`).
    pub fingerprint: String,
}

/// When to browse afresh after start, in milliseconds (see `start`).
const REBROWSE_AFTER_START_MS: [u64; 4] = [300, 700, 1_500, 3_000];

/// Names of the network interfaces that are up (Linux: `/sys/class/net/*/operstate`;
/// elsewhere empty, and only the browse after start is repeated).
fn interfaces_up() -> std::collections::BTreeSet<String> {
    let mut up = std::collections::BTreeSet::new();
    if let Ok(dir) = std::fs::read_dir("/sys/class/net") {
        for e in dir.flatten() {
            let state = std::fs::read_to_string(e.path().join("operstate")).unwrap_or_default();
            // "unknown" is what tun devices and some drivers report while passing traffic.
            if matches!(state.trim(), "up" | "unknown") {
                up.insert(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    up
}

/// A running mDNS responder and browser; stops when dropped.
pub struct Mdns {
    daemon: ServiceDaemon,
}

impl std::fmt::Debug for Mdns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mdns").finish_non_exhaustive()
    }
}

impl Drop for Mdns {
    fn drop(&mut self) {
        let _ = self.daemon.shutdown();
    }
}

/// What a `_ferry._udp` record told us.
#[derive(Debug, PartialEq, Eq)]
pub enum Record {
    /// A node and where to dial it.
    Node(NodeId, Vec<SocketAddr>),
    /// One of ours, but with no address we can dial yet (mDNS often resolves the service
    /// before its address records arrive): wait for the next resolution.
    NoAddress(NodeId),
    /// Not a Ferry record we understand: malformed id, other protocol version, port 0.
    Garbage,
}

/// Reads a `_ferry._udp` record's TXT fields and addresses.
pub fn parse_record(
    id: Option<&str>,
    version: Option<&str>,
    addrs: impl IntoIterator<Item = IpAddr>,
    port: u16,
) -> Record {
    let Some(node) = id.and_then(|i| i.parse::<NodeId>().ok()) else {
        return Record::Garbage;
    };
    let v: Option<u32> = version.and_then(|v| v.parse().ok());
    if v != Some(MESH_PROTOCOL_VERSION) || port == 0 {
        return Record::Garbage;
    }
    let addrs: Vec<SocketAddr> = addrs
        .into_iter()
        // Link-local IPv6 needs a scope the record does not carry reliably; IPv4 and global
        // IPv6 are enough to dial.
        .filter(|ip| match ip {
            IpAddr::V4(v4) => !v4.is_unspecified() && !v4.is_loopback(),
            IpAddr::V6(v6) => {
                !v6.is_unspecified() && !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80
            }
        })
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    if addrs.is_empty() {
        Record::NoAddress(node)
    } else {
        Record::Node(node, addrs)
    }
}

/// Starts announcing and browsing.
pub fn start(
    mesh: MeshHandle,
    mesh_port: u16,
    client: Option<ClientAnnouncement>,
) -> Result<Mdns, mdns_sd::Error> {
    let daemon = ServiceDaemon::new()?;
    // Look for new interfaces and addresses every second instead of every five: measured in
    // network namespaces, peers are found about a second after start instead of five, and a
    // link that comes back is announced on sooner. It costs one getifaddrs per second.
    daemon.set_ip_check_interval(1)?;
    let me = mesh.node_id();
    let name = format!("ferry-{}", me.short());
    let host = format!("{name}.local.");
    let props = [
        ("id", me.to_hex()),
        ("v", MESH_PROTOCOL_VERSION.to_string()),
    ];
    // Names carry the node id, so they cannot clash: skip RFC 6762 probing, which holds back
    // every answer for the first second or two (measured: discovery in 2 s instead of 0.2).
    let mut info = ServiceInfo::new(FERRY_SERVICE, &name, &host, "", mesh_port, &props[..])?
        .enable_addr_auto();
    info.set_requires_probe(false);
    daemon.register(info)?;
    if let Some(c) = client {
        let props = [("fp", c.fingerprint), ("id", me.to_hex())];
        let mut info =
            ServiceInfo::new(QPQ_SERVICE, &name, &host, "", c.port, &props[..])?.enable_addr_auto();
        info.set_requires_probe(false);
        daemon.register(info)?;
    }
    let mut rx = daemon.browse(FERRY_SERVICE)?;
    let browser = daemon.clone();
    tokio::spawn(tracing::Instrument::in_current_span(async move {
        // mdns-sd queries at start and then at doubling intervals. Both miss peers whose
        // responder was not up yet (every node of a mesh boots at once after a power cut),
        // and an interface that comes up later keeps the address it had, so mdns-sd does not
        // query on it as new. Browsing afresh restarts the queries: a few times in the first
        // seconds, and whenever the set of interfaces that are up changes.
        let started = tokio::time::Instant::now();
        let mut early = REBROWSE_AFTER_START_MS
            .iter()
            .map(|ms| started + Duration::from_millis(*ms));
        let mut next_early = early.next();
        let mut up = interfaces_up();
        let mut next_check = started + Duration::from_secs(1);
        loop {
            let wake = next_early.map_or(next_check, |t| t.min(next_check));
            let ev = tokio::select! {
                ev = rx.recv_async() => match ev {
                    Ok(ev) => ev,
                    Err(_) => return,
                },
                _ = tokio::time::sleep_until(wake) => {
                    let now = tokio::time::Instant::now();
                    let mut rebrowse = false;
                    if next_early.is_some_and(|t| now >= t) {
                        next_early = early.next();
                        rebrowse = true;
                    }
                    if now >= next_check {
                        next_check = now + Duration::from_secs(1);
                        let now_up = interfaces_up();
                        if now_up != up {
                            up = now_up;
                            rebrowse = true;
                        }
                    }
                    if rebrowse {
                        let _ = browser.stop_browse(FERRY_SERVICE);
                        match browser.browse(FERRY_SERVICE) {
                            Ok(r) => rx = r,
                            Err(_) => return,
                        }
                    }
                    continue;
                }
            };
            let ServiceEvent::ServiceResolved(info) = ev else {
                continue;
            };
            let parsed = parse_record(
                info.txt_properties.get_property_val_str("id"),
                info.txt_properties.get_property_val_str("v"),
                info.get_addresses().iter().map(|a| a.to_ip_addr()),
                info.get_port(),
            );
            match parsed {
                Record::Node(node, _) | Record::NoAddress(node) if node == me => {}
                Record::Node(node, addrs) => {
                    tracing::debug!(peer = %node.short(), ?addrs, "mDNS: found a node");
                    mesh.discovered(node, &addrs, PeerSource::Mdns);
                }
                Record::NoAddress(_) => {}
                Record::Garbage => {
                    mesh.count_mdns_garbage();
                    tracing::debug!(
                        name = info.get_fullname(),
                        "mDNS: ignoring a malformed record"
                    );
                }
            }
        }
    }));
    Ok(Mdns { daemon })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_records_are_ignored() {
        let id = "ab".repeat(32);
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        let node: NodeId = id.parse().unwrap();
        assert_eq!(
            parse_record(Some(&id), Some("1"), [ip], 5002),
            Record::Node(node, vec!["10.0.0.2:5002".parse().unwrap()])
        );
        for (i, v, port) in [
            (Some("zz"), Some("1"), 5002),
            (Some(&id[..10]), Some("1"), 5002),
            (None, Some("1"), 5002),
            (Some(&id[..]), Some("x"), 5002),
            (Some(&id[..]), Some("2"), 5002),
            (Some(&id[..]), None, 5002),
            (Some(&id[..]), Some("1"), 0),
        ] {
            assert_eq!(
                parse_record(i, v, [ip], port),
                Record::Garbage,
                "{i:?} {v:?} {port}"
            );
        }
        // Ours, but nothing dialable yet: not garbage, just not ready.
        let ll: IpAddr = "fe80::1".parse().unwrap();
        assert_eq!(
            parse_record(Some(&id), Some("1"), [ll], 5002),
            Record::NoAddress(node)
        );
    }
}
