//! Golden tests for `plugin.toml`: every file in `tests/manifests/valid` parses; every file in
//! `tests/manifests/invalid` fails with exactly the message in the `.err` file next to it (each names its key).
//! Run with `BLESS=1` to rewrite the `.err` files after an intended change, then review the diff.

use std::path::Path;

use hub_runtime::Manifest;

fn files(dir: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests").join(dir);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    out.sort();
    out
}

#[test]
fn valid_manifests_parse() {
    let valid = files("valid");
    assert!(valid.len() >= 3);
    for path in valid {
        let text = std::fs::read_to_string(&path).unwrap();
        if let Err(e) = Manifest::parse(&text) {
            panic!("{}: {e}", path.display());
        }
    }
}

#[test]
fn invalid_manifests_fail_naming_the_key() {
    let bless = std::env::var_os("BLESS").is_some();
    let invalid = files("invalid");
    assert!(invalid.len() >= 8);
    for path in invalid {
        let text = std::fs::read_to_string(&path).unwrap();
        let err = match Manifest::parse(&text) {
            Ok(_) => panic!("{} parsed but should not", path.display()),
            Err(e) => e.to_string(),
        };
        let expected_path = path.with_extension("err");
        if bless {
            std::fs::write(&expected_path, format!("{err}\n")).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{} is missing; run with BLESS=1", expected_path.display()));
        assert_eq!(err, expected.trim_end(), "{}", path.display());
    }
}

#[test]
fn full_manifest_reads_every_field() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests/valid/full.toml")).unwrap();
    let m = Manifest::parse(&text).unwrap();
    assert_eq!(m.id, "lora-gw");
    assert_eq!(m.version, semver::Version::parse("2.1.0-rc.1").unwrap());
    assert_eq!(m.kind, hub_runtime::PluginKind::Adapter);
    assert_eq!((m.limits.memory_mib, m.limits.timeout_ms, m.tick_ms), (64, 250, Some(1000)));
    assert_eq!(m.capabilities.udp.ports, vec![1700]);
    assert_eq!(m.default_config()["keys"]["app"], "x");
    assert!(m.supports_hub(&semver::Version::new(0, 1, 5)));
    assert!(!m.supports_hub(&semver::Version::new(0, 2, 0)));
}
