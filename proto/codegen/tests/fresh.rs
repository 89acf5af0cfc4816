//! The committed prost code must match the `.proto` files.

#[test]
fn generated_code_is_fresh() {
    let tmp = std::env::temp_dir().join(format!("ferry-proto-gen-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let names = ferry_proto_codegen::generate(&tmp).unwrap();
    assert!(names.iter().any(|n| n == "qpq.v1.rs"), "{names:?}");
    assert!(names.iter().any(|n| n == "ferry.e2e.v1.rs"), "{names:?}");
    let committed_dir = ferry_proto_codegen::gen_dir();
    let mut stale = Vec::new();
    for name in &names {
        let fresh = std::fs::read_to_string(tmp.join(name)).unwrap();
        let committed = std::fs::read_to_string(committed_dir.join(name)).unwrap_or_default();
        if fresh != committed {
            stale.push(name.clone());
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(
        stale.is_empty(),
        "generated code is stale: {stale:?}; run `cargo run -p ferry-proto-codegen` and commit proto/src/gen/"
    );
}
