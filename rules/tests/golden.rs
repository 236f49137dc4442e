//! Golden tests for the parser and the checker: every `tests/golden/*.rule` is parsed and checked against a
//! fixed model, and the diagnostics (`line:column severity code message`, or `ok`) must equal the
//! `.expected` file next to it. Run with `BLESS=1` to rewrite the expected files after a deliberate change.

use std::{fs, path::Path};

mod common;

use common::model;
use hub_rules::{ModelView, check, parse};

fn diagnose(source: &str, model: &dyn ModelView) -> String {
    let diagnostics = match parse(source) {
        Ok(rules) => check(&rules, model, &[]),
        Err(diagnostics) => diagnostics,
    };
    if diagnostics.is_empty() {
        return "ok\n".into();
    }
    diagnostics.iter().map(|d| format!("{d}\n")).collect()
}

#[test]
fn golden_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let bless = std::env::var_os("BLESS").is_some();
    let model = model();
    let mut cases: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rule"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 25, "expected at least 25 golden cases, found {}", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let source = fs::read_to_string(case).unwrap();
        let got = diagnose(&source, &model);
        let expected_path = case.with_extension("expected");
        if bless {
            fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = fs::read_to_string(&expected_path).unwrap_or_default();
        if got != expected {
            failures.push(format!("{}:\n--- expected\n{expected}--- got\n{got}", case.display()));
        }
    }
    assert!(failures.is_empty(), "{} golden case(s) differ:\n\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn valid_cases_are_valid_and_invalid_ones_are_not() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let model = model();
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rule") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let got = diagnose(&fs::read_to_string(&path).unwrap(), &model);
        if name.starts_with("valid_") {
            assert_eq!(got, "ok\n", "{name} should have no diagnostics");
        } else {
            assert_ne!(got, "ok\n", "{name} should have diagnostics");
        }
    }
}
