//! Rewrites `proto/src/gen/` from the `.proto` files.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = ferry_proto_codegen::gen_dir();
    std::fs::create_dir_all(&out)?;
    let names = ferry_proto_codegen::generate(&out)?;
    eprintln!("wrote {} files to {}", names.len(), out.display());
    Ok(())
}
