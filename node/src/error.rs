use std::path::PathBuf;

use thiserror::Error;

/// Why a node could not start or stopped with an error.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] ferry_store::StoreError),
    /// A file in the data directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// The certificate files are unusable.
    #[error("certificate {path}: {reason}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// Certificate generation failed.
    #[error("generating the node certificate: {0}")]
    CertGen(#[from] rcgen::Error),
    /// TLS configuration failed.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// An address in the configuration does not parse.
    #[error("{field} = {value:?}: not an address with a port from 1 to 65535, like [::]:5001")]
    Address {
        /// The configuration field.
        field: &'static str,
        /// The value given.
        value: String,
    },
    /// The mesh could not start.
    #[error("mesh: {0}")]
    Mesh(String),
    /// The configuration file is not valid.
    #[error("config file {path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
}
