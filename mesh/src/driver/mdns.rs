//! Discovery on the local link with mDNS (mdns-sd): announce `_ferry._udp.local.` (node id,
//! mesh port, protocol version) and `_quicproquo._udp.local.` (client port, certificate
//! fingerprint, for clients), and browse `_ferry._udp.local.` for neighbours.
//!
//! mdns-sd shares UDP 5353 with OpenWrt's umdns (both set SO_REUSEADDR/SO_REUSEPORT). mDNS does
//! not cross routed hops (Gluon's batman-adv, OSPF meshes); static peers and peer exchange
//! cover those.

use std::net::{IpAddr, SocketAddr};

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

/// What a `_ferry._udp` record told us, if it is one of ours and well-formed.
pub fn parse_record(
    id: Option<&str>,
    version: Option<&str>,
    addrs: impl IntoIterator<Item = IpAddr>,
    port: u16,
) -> Option<(NodeId, Vec<SocketAddr>)> {
    let node: NodeId = id?.parse().ok()?;
    let v: u32 = version?.parse().ok()?;
    if v != MESH_PROTOCOL_VERSION || port == 0 {
        return None;
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
        return None;
    }
    Some((node, addrs))
}

/// Starts announcing and browsing.
pub fn start(
    mesh: MeshHandle,
    mesh_port: u16,
    client: Option<ClientAnnouncement>,
) -> Result<Mdns, mdns_sd::Error> {
    let daemon = ServiceDaemon::new()?;
    let me = mesh.node_id();
    let name = format!("ferry-{}", me.short());
    let host = format!("{name}.local.");
    let props = [
        ("id", me.to_hex()),
        ("v", MESH_PROTOCOL_VERSION.to_string()),
    ];
    let info = ServiceInfo::new(FERRY_SERVICE, &name, &host, "", mesh_port, &props[..])?
        .enable_addr_auto();
    daemon.register(info)?;
    if let Some(c) = client {
        let props = [("fp", c.fingerprint), ("id", me.to_hex())];
        let info =
            ServiceInfo::new(QPQ_SERVICE, &name, &host, "", c.port, &props[..])?.enable_addr_auto();
        daemon.register(info)?;
    }
    let rx = daemon.browse(FERRY_SERVICE)?;
    tokio::spawn(async move {
        while let Ok(ev) = rx.recv_async().await {
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
                Some((node, _)) if node == me => {}
                Some((node, addrs)) => {
                    tracing::debug!(peer = %node.short(), ?addrs, "mDNS: found a node");
                    mesh.discovered(node, &addrs, PeerSource::Mdns);
                }
                None => {
                    mesh.count_mdns_garbage();
                    tracing::debug!(
                        name = info.get_fullname(),
                        "mDNS: ignoring a malformed record"
                    );
                }
            }
        }
    });
    Ok(Mdns { daemon })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_records_are_ignored() {
        let id = "ab".repeat(32);
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(parse_record(Some(&id), Some("1"), [ip], 5002).is_some());
        for (i, v, port) in [
            (Some("zz"), Some("1"), 5002),
            (Some(&id[..10]), Some("1"), 5002),
            (None, Some("1"), 5002),
            (Some(&id[..]), Some("x"), 5002),
            (Some(&id[..]), Some("2"), 5002),
            (Some(&id[..]), None, 5002),
            (Some(&id[..]), Some("1"), 0),
        ] {
            assert!(
                parse_record(i, v, [ip], port).is_none(),
                "{i:?} {v:?} {port}"
            );
        }
        let ll: IpAddr = "fe80::1".parse().unwrap();
        assert!(parse_record(Some(&id), Some("1"), [ll], 5002).is_none());
    }
}
