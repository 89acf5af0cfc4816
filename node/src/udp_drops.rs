//! Datagrams the kernel dropped because one of this process's UDP sockets had a full receive
//! buffer (`udp_receive_drops_total` on /metrics). Each drop costs a QUIC sender a
//! retransmission and a congestion-window cut; a count that keeps growing asks for a larger
//! `udp_receive_buffer_bytes` (or, when the log said the buffer was capped, a larger
//! `net.core.rmem_max`).
//!
//! Read at scrape time from Linux's `/proc/net/udp` and `/proc/net/udp6` (the `drops` column),
//! for the sockets whose inodes `/proc/self/fd` links to. Elsewhere, or when `/proc` cannot be
//! read, there is nothing to report.

use std::collections::{BTreeMap, HashSet};

/// Drops per local port, over this process's UDP sockets (IPv4 and IPv6 ones on the same port
/// summed).
pub(crate) fn by_port() -> BTreeMap<u16, u64> {
    let mut out = BTreeMap::new();
    let inodes = own_socket_inodes();
    if inodes.is_empty() {
        return out;
    }
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            add_rows(&text, &inodes, &mut out);
        }
    }
    out
}

/// The inodes of the sockets this process has open (`socket:[N]` links in `/proc/self/fd`).
fn own_socket_inodes() -> HashSet<u64> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return HashSet::new();
    };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let s = target.to_str()?;
            s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// Adds the drops of the rows of `table` (the text of `/proc/net/udp` or `udp6`) whose inode
/// is in `inodes` to `out`, by local port. Rows that do not parse are skipped.
fn add_rows(table: &str, inodes: &HashSet<u64>, out: &mut BTreeMap<u16, u64>) {
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(inode), Some(drops)) = (f.get(1), f.get(9), f.get(12)) else {
            continue;
        };
        let Ok(inode) = inode.parse::<u64>() else {
            continue;
        };
        if !inodes.contains(&inode) {
            continue;
        }
        let port = local
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        if let (Some(port), Ok(drops)) = (port, drops.parse::<u64>()) {
            let n = out.entry(port).or_insert(0);
            *n = n.saturating_add(drops);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  471: 0100007F:3A99 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 9011 2 0000000000000000 2108
  472: 00000000:B40F 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 9012 2 0000000000000000 234
  473: 00000000:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 777 2 0000000000000000 5
  474: garbage
";
    const UDP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  10: 00000000000000000000000000000000:3A99 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 9013 2 0000000000000000 7
";

    #[test]
    fn drops_are_summed_by_port_for_this_process_sockets_only() {
        let mine: HashSet<u64> = [9011, 9012, 9013].into();
        let mut out = BTreeMap::new();
        add_rows(UDP, &mine, &mut out);
        add_rows(UDP6, &mine, &mut out);
        // 0x3A99 = 15001 (IPv4 2108 + IPv6 7), 0xB40F = 46095; inode 777 is not ours.
        assert_eq!(out, BTreeMap::from([(15001, 2115), (46095, 234)]));
    }

    #[test]
    fn this_process_sockets_are_found() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = s.local_addr().unwrap().port();
        if cfg!(target_os = "linux") {
            assert_eq!(by_port().get(&port), Some(&0));
        }
    }
}
