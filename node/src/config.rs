//! Node configuration: defaults, overlaid by a TOML file, overlaid by flags and `FERRY_*`
//! environment variables (the binary resolves those two with clap).

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_proto::limits::{DEFAULT_CLIENT_PORT, DEFAULT_MAX_TTL_SECS, DEFAULT_TTL_SECS};
use ferry_store::StoreConfig;
use serde::Deserialize;

use crate::NodeError;

/// The `[store]` table of the config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// Node-wide budget of stored message bytes.
    pub max_total_bytes: Option<u64>,
    /// Messages one recipient may have stored.
    pub max_recipient_messages: Option<u64>,
    /// Bytes one recipient may have stored.
    pub max_recipient_bytes: Option<u64>,
    /// redb page cache in bytes.
    pub cache_bytes: Option<usize>,
}

/// The config file, every key optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Data directory (database, certificate).
    pub data_dir: Option<PathBuf>,
    /// Client protocol address, `host:port`.
    pub listen: Option<String>,
    /// HTTP address for `/metrics` and `/healthz`.
    pub metrics: Option<String>,
    /// Requests per second per client IP; 0 disables the limit.
    pub rate_limit: Option<u32>,
    /// Log filter, like `info` or `info,ferry_node=debug`.
    pub log: Option<String>,
    /// Simultaneous client connections at most.
    pub max_connections: Option<usize>,
    /// Seconds to let in-flight requests finish on shutdown.
    pub drain_timeout_secs: Option<u64>,
    /// Request body bytes buffered at once over all connections.
    pub max_request_bytes_in_flight: Option<usize>,
    /// TTL for messages that ask for the default (`ttl_secs = 0`).
    pub default_ttl_secs: Option<u32>,
    /// Longest TTL accepted.
    pub max_ttl_secs: Option<u32>,
    /// Tokio worker threads (default: CPU count, at most 4).
    pub worker_threads: Option<usize>,
    /// Store limits.
    pub store: Option<StoreSection>,
}

impl FileConfig {
    /// Reads and parses a TOML config file; unknown keys are errors, so typos are noticed.
    pub fn load(path: &Path) -> Result<Self, NodeError> {
        let text = std::fs::read_to_string(path).map_err(|source| NodeError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| NodeError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }
}

/// The resolved configuration of a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Client protocol address. The default `[::]:5001` falls back to `0.0.0.0:5001` on hosts
    /// without IPv6.
    pub listen: String,
    /// Metrics HTTP address, if any.
    pub metrics: Option<String>,
    /// Requests per second per IP, 0 = unlimited.
    pub rate_limit: u32,
    /// Requests a client IP may burst above the rate.
    pub rate_burst: u32,
    /// Simultaneous connections at most.
    pub max_connections: usize,
    /// Concurrent RPC streams per connection at most.
    pub max_streams_per_connection: u32,
    /// Concurrent RPCs in the whole node at most (beyond that, streams wait).
    pub max_inflight_requests: usize,
    /// Request body bytes the node buffers at once, over all connections. A request takes
    /// its declared length from this budget before its body is read, so slow or malicious
    /// senders cannot make the node buffer more than this.
    pub max_request_bytes_in_flight: usize,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// TTL applied to `ttl_secs = 0`.
    pub default_ttl_secs: u32,
    /// Longest TTL accepted; longer requests are refused with BadRequest.
    pub max_ttl_secs: u32,
    /// How often expired messages are swept.
    pub sweep_interval: Duration,
    /// Store limits.
    pub store: StoreConfig,
    /// Log filter (used by the binary).
    pub log: String,
    /// Tokio worker threads (used by the binary).
    pub worker_threads: usize,
}

/// The data directory used when none is configured: `./ferry-data`.
pub const DEFAULT_DATA_DIR: &str = "ferry-data";

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            listen: format!("[::]:{DEFAULT_CLIENT_PORT}"),
            metrics: None,
            rate_limit: 50,
            rate_burst: 100,
            max_connections: 4096,
            max_streams_per_connection: 64,
            max_inflight_requests: 4096,
            max_request_bytes_in_flight: 32 * 1024 * 1024,
            drain_timeout: Duration::from_secs(10),
            default_ttl_secs: DEFAULT_TTL_SECS,
            max_ttl_secs: DEFAULT_MAX_TTL_SECS,
            sweep_interval: Duration::from_secs(60),
            store: StoreConfig::default(),
            log: "info".into(),
            worker_threads: std::thread::available_parallelism()
                .map(|n| n.get().min(4))
                .unwrap_or(2),
        }
    }
}

impl NodeConfig {
    /// Defaults overlaid with a config file.
    pub fn from_file(file: &FileConfig) -> Self {
        let mut c = Self::default();
        c.apply(file);
        c
    }

    /// Overlays every key the file sets.
    pub fn apply(&mut self, f: &FileConfig) {
        if let Some(v) = &f.data_dir {
            self.data_dir = v.clone();
        }
        if let Some(v) = &f.listen {
            self.listen = v.clone();
        }
        if let Some(v) = &f.metrics {
            self.metrics = Some(v.clone()).filter(|m| !m.is_empty());
        }
        if let Some(v) = f.rate_limit {
            self.set_rate_limit(v);
        }
        if let Some(v) = &f.log {
            self.log = v.clone();
        }
        if let Some(v) = f.max_connections {
            self.max_connections = v;
        }
        if let Some(v) = f.drain_timeout_secs {
            self.drain_timeout = Duration::from_secs(v);
        }
        if let Some(v) = f.max_request_bytes_in_flight {
            self.max_request_bytes_in_flight = v;
        }
        if let Some(v) = f.default_ttl_secs {
            self.default_ttl_secs = v;
        }
        if let Some(v) = f.max_ttl_secs {
            self.max_ttl_secs = v;
        }
        if let Some(v) = f.worker_threads {
            self.worker_threads = v.max(1);
        }
        if let Some(s) = &f.store {
            if let Some(v) = s.max_total_bytes {
                self.store.max_total_bytes = v;
            }
            if let Some(v) = s.max_recipient_messages {
                self.store.max_recipient_messages = v;
            }
            if let Some(v) = s.max_recipient_bytes {
                self.store.max_recipient_bytes = v;
            }
            if let Some(v) = s.cache_bytes {
                self.store.cache_bytes = v;
            }
        }
    }

    /// Sets the per-IP rate; the burst is twice the rate (at least 10).
    pub fn set_rate_limit(&mut self, per_sec: u32) {
        self.rate_limit = per_sec;
        self.rate_burst = per_sec.saturating_mul(2).max(10);
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("ferry.redb")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overlays_defaults_and_rejects_unknown_keys() {
        let f: FileConfig = toml::from_str(
            r#"
            data_dir = "/tmp/x"
            listen = "127.0.0.1:7000"
            rate_limit = 0
            max_ttl_secs = 3600
            [store]
            max_total_bytes = 1000000
            "#,
        )
        .unwrap();
        let c = NodeConfig::from_file(&f);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.listen, "127.0.0.1:7000");
        assert_eq!(c.rate_limit, 0);
        assert_eq!(c.max_ttl_secs, 3600);
        assert_eq!(c.store.max_total_bytes, 1_000_000);
        assert_eq!(c.default_ttl_secs, DEFAULT_TTL_SECS);
        let err = toml::from_str::<FileConfig>("listn = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listn"), "{err}");
    }
}
