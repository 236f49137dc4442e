//! Builds the official adapters in `plugins/` for `wasm32-unknown-unknown` with a nested cargo, and writes
//! `official.rs` into `OUT_DIR`: each adapter's manifest (with the module's real sha256) and its bytes.
//!
//! The nested build uses its own target directory (`$CARGO_TARGET_DIR/wasm`, else `target/wasm`), which the
//! end-to-end tests share, so the outer build's lock is never contended and the cache is reused.

use std::{
    env,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use sha2::Digest;

/// (plugin id, folder under `plugins/`, cargo package).
const OFFICIAL: &[(&str, &str, &str)] = &[
    ("mqtt", "mqtt", "hub-adapter-mqtt"),
    ("coap", "coap", "hub-adapter-coap"),
    ("lorawan", "lorawan", "hub-adapter-lorawan"),
    ("xmpp", "xmpp", "hub-adapter-xmpp"),
];

/// Variables the outer cargo sets for its own compilation that must not leak into the wasm build.
const SCRUB: &[&str] = &[
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_WRAPPER",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CLIPPY_ARGS",
    "CARGO_PRIMARY_PACKAGE",
    "__CARGO_FIX_PLZ",
];

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let repo = manifest_dir.join("../..");
    let plugins = repo.join("plugins");
    let target_dir =
        env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo.join("target")).join("wasm");

    for path in ["plugins/Cargo.toml", "plugins/Cargo.lock", "plugin-sdk/src", "plugin-sdk/Cargo.toml"] {
        println!("cargo::rerun-if-changed={}", repo.join(path).display());
    }
    println!("cargo::rerun-if-env-changed=CARGO_TARGET_DIR");
    for (_, folder, _) in OFFICIAL {
        println!("cargo::rerun-if-changed={}", plugins.join(folder).display());
    }

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--locked", "--release", "--target", "wasm32-unknown-unknown", "--manifest-path"])
        .arg(plugins.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    for (_, _, package) in OFFICIAL {
        command.args(["-p", package]);
    }
    for key in SCRUB {
        command.env_remove(key);
    }
    let status = command.status().unwrap_or_else(|e| panic!("cannot run cargo to build the official adapters: {e}"));
    if !status.success() {
        panic!(
            "building the official adapters in plugins/ for wasm32-unknown-unknown failed (see above). \
             If the target is missing: `rustup target add wasm32-unknown-unknown` (rust-toolchain.toml lists it)."
        );
    }

    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut code =
        String::from("/// The official adapters this hub was built with.\npub static OFFICIAL: &[Official] = &[\n");
    for (id, folder, package) in OFFICIAL {
        let wasm_path =
            target_dir.join("wasm32-unknown-unknown/release").join(format!("{}.wasm", package.replace('-', "_")));
        let wasm = read(&wasm_path);
        let sha = hex::encode(sha2::Sha256::digest(&wasm));
        let manifest =
            String::from_utf8(read(&plugins.join(folder).join("plugin.toml"))).expect("plugin.toml is UTF-8");
        let manifest = with_sha256(&manifest, &sha);
        let embedded_wasm = out_dir.join(format!("{id}.wasm"));
        let embedded_manifest = out_dir.join(format!("{id}.plugin.toml"));
        fs::write(&embedded_wasm, &wasm).expect("writing OUT_DIR");
        fs::write(&embedded_manifest, manifest).expect("writing OUT_DIR");
        writeln!(
            code,
            "    Official {{ id: {id:?}, manifest: include_str!({m:?}), wasm: include_bytes!({w:?}), sha256: {sha:?} }},",
            m = embedded_manifest.display().to_string(),
            w = embedded_wasm.display().to_string(),
        )
        .expect("writing to a string");
    }
    code.push_str("];\n");
    fs::write(out_dir.join("official.rs"), code).expect("writing OUT_DIR");
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The manifest with its `sha256 = "..."` line set to `sha`.
fn with_sha256(manifest: &str, sha: &str) -> String {
    let mut found = false;
    let mut out = String::with_capacity(manifest.len());
    for line in manifest.lines() {
        if line.trim_start().starts_with("sha256") && line.contains('=') && !found {
            found = true;
            writeln!(out, "sha256 = \"{sha}\"").expect("writing to a string");
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(found, "the manifest has no sha256 line");
    out
}
