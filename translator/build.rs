//! Locates the protobuf descriptor set that envoy-types ships beside its
//! generated code, so that `render` can print resources in Envoy's proto3
//! JSON without us vendoring 3 MB of descriptors. `cargo metadata` is the
//! supported way to learn where a dependency's sources live.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--manifest-path",
        ])
        .arg(PathBuf::from(&manifest_dir).join("Cargo.toml"))
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("cargo metadata prints UTF-8");
    // Find `"manifest_path":".../envoy-types-X/Cargo.toml"` without a JSON
    // dependency in the build script.
    let needle = "envoy-types-";
    let path = text
        .split("\"manifest_path\":\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .find(|p| p.contains(needle) && p.ends_with("Cargo.toml"))
        .expect("envoy-types is a dependency");
    let bin = PathBuf::from(path)
        .parent()
        .expect("manifest has a parent")
        .join("src/generated/types.bin");
    assert!(bin.exists(), "{} not found", bin.display());
    println!("cargo:rustc-env=ENVOY_TYPES_DESCRIPTORS={}", bin.display());
    println!("cargo:rerun-if-changed={}", bin.display());
}
