//! The plugins' own unit tests (the official adapters, the template, the fixtures) run natively in the `plugins/`
//! workspace, which is not a member of the hub's. This test runs them, so `cargo test --workspace` covers them.

use std::{path::Path, process::Command};

#[test]
fn the_plugins_workspace_unit_tests_pass() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo.join("target"))
        .join("wasm-native");
    let output = Command::new(cargo)
        .args(["test", "--locked", "--workspace", "--manifest-path"])
        .arg(repo.join("plugins/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("running cargo test for plugins/");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the plugins' unit tests failed:\n{stdout}\n{stderr}");
    let passed: usize = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("test result: ok. "))
        .filter_map(|rest| rest.split(' ').next()?.parse::<usize>().ok())
        .sum();
    // The MQTT, CoAP and LoRaWAN adapters alone have more than 80 tests; far fewer means they did not run.
    assert!(passed > 80, "only {passed} plugin tests ran:\n{stdout}");
}
