//! Code generation for `ferry-proto`: compiles the `.proto` files with protox (a Rust protobuf
//! compiler, so no `protoc` is needed) and runs prost-build on the result.
//!
//! `cargo run -p ferry-proto-codegen` rewrites `proto/src/gen/`; the test in `tests/` fails
//! when the committed files differ from what the `.proto` files produce.

use std::path::{Path, PathBuf};

/// The `.proto` files, relative to the `proto/` directory.
pub const PROTO_FILES: &[&str] = &[
    "qpq/v1/auth.proto",
    "qpq/v1/common.proto",
    "qpq/v1/delivery.proto",
    "qpq/v1/keys.proto",
    "qpq/v1/p2p.proto",
    "qpq/v1/push.proto",
    "qpq/v1/federation.proto",
    "ferry/e2e/v1/message.proto",
    "ferry/mesh/v1/link.proto",
];

/// The `proto/` directory.
pub fn proto_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The committed output directory.
pub fn gen_dir() -> PathBuf {
    proto_dir().join("src").join("gen")
}

/// Generates every file into `out_dir`; returns their names.
pub fn generate(out_dir: &Path) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let root = proto_dir();
    let fds = protox::compile(PROTO_FILES, [&root])?;
    prost_build::Config::new()
        .out_dir(out_dir)
        .compile_fds(fds)?;
    let mut names: Vec<String> = std::fs::read_dir(out_dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".rs"))
        .collect();
    names.sort();
    Ok(names)
}
