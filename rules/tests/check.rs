//! The checker across rule sets: loops and conflicts with rules already deployed, replacement by name, and
//! the JSON form of diagnostics.

mod common;

use hub_rules::{DiagCode, Severity, check, parse};

fn one(src: &str) -> Vec<hub_rules::Rule> {
    parse(src).unwrap()
}

#[test]
fn loops_through_deployed_rules_are_found() {
    let model = common::model();
    let deployed = one(r#"rule mode_from_light when lamp-1/light/on == true then set lamp-1/light/mode = "auto" end"#);
    let new = one(r#"rule light_from_mode when lamp-1/light/mode == "auto" then set lamp-1/light/on = true end"#);
    let diags = check(&new, &model, &deployed);
    let loops: Vec<_> = diags.iter().filter(|d| d.code == DiagCode::FeedbackLoop).collect();
    assert_eq!(loops.len(), 1, "{diags:?}");
    assert_eq!(loops[0].severity, Severity::Error);
    assert_eq!(loops[0].rule.as_deref(), Some("light_from_mode"));
    assert!(loops[0].message.contains("`mode_from_light`"), "{}", loops[0].message);
    // The deployed rules alone are fine: only cycles through a new rule are reported.
    assert!(check(&[], &model, &deployed).is_empty());
}

#[test]
fn a_new_rule_replaces_the_deployed_one_with_its_name() {
    let model = common::model();
    let deployed = one(r#"rule r when lamp-1/light/on == true then set lamp-1/light/mode = "auto" end"#);
    let other = one(r#"rule other when lamp-1/light/mode == "auto" then set lamp-1/light/on = true end"#);
    assert!(check(&other, &model, &deployed).iter().any(|d| d.code == DiagCode::FeedbackLoop));
    // Replacing `r` by a version that no longer writes the mode breaks the cycle.
    let fixed = one(r#"rule r when lamp-1/light/on == true then publish "on" end"#);
    let mut new = fixed.clone();
    new.extend(other);
    assert!(check(&new, &model, &deployed).iter().all(|d| d.code != DiagCode::FeedbackLoop));
}

#[test]
fn conflicts_with_deployed_rules_and_disjoint_conditions() {
    let model = common::model();
    let deployed = one(r#"rule loud when noise-12/sound/level > 70 then set noise-12/sign/display = "quiet" end
rule same when noise-12/sound/level > 80 then set noise-12/sign/display = "quiet" end"#);
    let overlapping = one(r#"rule busy when noise-12/sound/level >= 60 then set noise-12/sign/display = "busy" end"#);
    let diags = check(&overlapping, &model, &deployed);
    let conflicts: Vec<_> = diags.iter().filter(|d| d.code == DiagCode::Conflict).collect();
    assert_eq!(conflicts.len(), 2, "{diags:?}");
    assert!(conflicts.iter().all(|d| d.severity == Severity::Warning && d.rule.as_deref() == Some("busy")));
    let disjoint = one(r#"rule calm when noise-12/sound/level < 70 then set noise-12/sign/display = "welcome" end"#);
    assert!(check(&disjoint, &model, &deployed).is_empty());
    // The else branch holds when the condition does not: `<= 70`, which overlaps `< 70`.
    let with_else = one(
        r#"rule sign when noise-12/sound/level > 70 then set noise-12/sign/display = "loud" else set noise-12/sign/display = "ok" end"#,
    );
    let diags = check(
        &with_else,
        &model,
        &one(r#"rule calm when noise-12/sound/level < 60 then set noise-12/sign/display = "calm" end"#),
    );
    assert_eq!(diags.iter().filter(|d| d.code == DiagCode::Conflict).count(), 1, "{diags:?}");
}

#[test]
fn diagnostics_serialise_for_the_api() {
    let errs = parse("rule r when a/b > 1 then publish \"x\" end").unwrap_err();
    let json = serde_json::to_value(&errs[0]).unwrap();
    assert_eq!(json["severity"], "error");
    assert_eq!(json["code"], "syntax");
    assert_eq!((json["line"].as_u64(), json["column"].as_u64()), (Some(1), Some(13)));
    assert_eq!((json["end_line"].as_u64(), json["end_column"].as_u64()), (Some(1), Some(16)));
    assert_eq!(json["rule"], "r");
    let back: hub_rules::Diagnostic = serde_json::from_value(json).unwrap();
    assert_eq!(back, errs[0]);
}
