use std::sync::atomic::{AtomicBool, AtomicUsize};

use super::*;
use crate::objects;

fn who(subject: &str, roles: &[&str]) -> Principal {
    Principal::new(subject, roles.iter().map(|r| (*r).to_owned()).collect())
}

const EVERY_KIND_OF_OBJECT: &[&str] = &[
    "noise-1/env/level",
    "noise-1",
    "building.3/env/temp.c",
    objects::POLICY,
    objects::TOKENS,
    objects::SYSTEM_HEALTH,
    objects::SYSTEM_METRICS,
    objects::SYSTEM_OPENAPI,
    "plugin:mqtt-adapter",
    "rule:heat-alert",
];

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn the_engine_is_shareable() {
    assert_send_sync::<PolicyEngine>();
    assert_send_sync::<crate::TokenRegistry>();
}

#[test]
fn default_policy_allows_admin_everything_and_denies_everyone_else() {
    let engine = PolicyEngine::new(DEFAULT_POLICY).unwrap();
    assert_eq!(engine.version(), 1);
    assert_eq!(engine.text(), DEFAULT_POLICY);
    for &object in EVERY_KIND_OF_OBJECT {
        for action in Action::ALL {
            assert!(engine.check(&who("admin", &[]), object, action), "admin {action} {object}");
            assert!(engine.check(&who("ci-bot", &["admin"]), object, action), "admin role {action} {object}");
            assert!(!engine.check(&Principal::anonymous(), object, action), "anonymous {action} {object}");
            assert!(!engine.check(&who("alice", &["ops"]), object, action), "alice {action} {object}");
        }
    }
    // The official MQTT adapter may write device data, and nothing else.
    let mqtt = who("plugin:mqtt", &[]);
    assert!(engine.check(&mqtt, "kiosk-7/env/temperature", Action::Write));
    assert!(!engine.check(&mqtt, "kiosk-7/env/temperature", Action::Read));
    assert!(!engine.check(&mqtt, "policy", Action::Admin));
}

#[test]
fn default_policy_examples_are_valid_when_uncommented() {
    let uncommented: String = DEFAULT_POLICY
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if rest.starts_with("p, ") || rest.starts_with("g, ") => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let engine = PolicyEngine::new(&uncommented).unwrap();
    assert!(engine.check(&Principal::anonymous(), objects::SYSTEM_HEALTH, Action::Read));
    assert!(engine.check(&who("alice", &[]), "noise-7/env/temperature", Action::Read));
}

const GOLDEN_POLICY: &str = "\
# golden policy
p, admin, *, *
p, anonymous, system:health, read
p, dashboard, noise-*, read
p, thermo, */*/temperature, read
p, building-ops, building.3/*, *
p, sensor-writer, sensor-?/*, write
p, actuators, */valves/*, act
p, plugin-admins, plugin:*, admin
p, auditors, policy, read
g, alice, operators
g, operators, dashboard
g, carol, auditors
";

/// (subject, roles, object, action, expected)
const GOLDEN_TABLE: &[(&str, &[&str], &str, Action, bool)] = &[
    ("anonymous", &[], "system:health", Action::Read, true),
    ("anonymous", &[], "system:metrics", Action::Read, false),
    ("anonymous", &[], "system:health", Action::Write, false),
    // Token roles count as subjects.
    ("grafana", &["dashboard"], "noise-1", Action::Read, true),
    ("grafana", &["dashboard"], "noise-1/env/level", Action::Read, true),
    ("grafana", &["dashboard"], "noise-1/env/level", Action::Write, false),
    ("grafana", &["dashboard"], "traffic-1/env/level", Action::Read, false),
    ("grafana", &["unrelated", "dashboard"], "noise-12/a/b", Action::Read, true),
    ("grafana", &[], "noise-1", Action::Read, false),
    // Subjects get roles through g lines, transitively.
    ("alice", &[], "noise-1/env/level", Action::Read, true),
    ("alice", &[], "noise-1/env/level", Action::Admin, false),
    ("bob", &["operators"], "noise-2", Action::Read, true),
    ("carol", &[], "policy", Action::Read, true),
    ("carol", &[], "policy", Action::Admin, false),
    ("carol", &[], "tokens", Action::Read, false),
    // `*` crosses `/`, dots are literal, `?` is one character.
    ("x", &["thermo"], "noise-1/env/temperature", Action::Read, true),
    ("x", &["thermo"], "noise-1/env/temperature2", Action::Read, false),
    ("x", &["building-ops"], "building.3/hvac/setpoint", Action::Act, true),
    ("x", &["building-ops"], "buildingX3/hvac/setpoint", Action::Act, false),
    ("x", &["sensor-writer"], "sensor-4/env/t", Action::Write, true),
    ("x", &["sensor-writer"], "sensor-42/env/t", Action::Write, false),
    ("x", &["actuators"], "site-1/valves/v3", Action::Act, true),
    ("x", &["actuators"], "site-1/valves/v3", Action::Write, false),
    ("x", &["plugin-admins"], "plugin:coap", Action::Admin, true),
    ("x", &["plugin-admins"], "rule:coap", Action::Admin, false),
    // Roles are names, not patterns; a role nobody granted gives nothing.
    ("x", &["*"], "noise-1", Action::Read, false),
    ("admin", &[], "anything/at/all", Action::Admin, true),
];

#[test]
fn golden_decisions() {
    let engine = PolicyEngine::new(GOLDEN_POLICY).unwrap();
    // Twice: the first round fills the cache, the second is served from it.
    for round in 0..2 {
        for &(subject, roles, object, action, expected) in GOLDEN_TABLE {
            let principal = who(subject, roles);
            assert_eq!(
                engine.check(&principal, object, action),
                expected,
                "round {round}: {subject} {roles:?} {action} {object}"
            );
        }
    }
    assert!(engine.cached_decisions() > 0);
}

#[test]
fn explain_agrees_with_check_and_names_the_line() {
    let engine = PolicyEngine::new(GOLDEN_POLICY).unwrap();
    for &(subject, roles, object, action, expected) in GOLDEN_TABLE {
        let principal = who(subject, roles);
        let explanation = engine.explain(&principal, object, action);
        assert_eq!(explanation.allowed, expected, "{subject} {roles:?} {action} {object}");
        assert_eq!(explanation.matched.is_some(), expected, "{explanation:?}");
        assert_eq!(explanation.line.is_some(), expected, "{explanation:?}");
    }
    let alice = engine.explain(&who("alice", &[]), "noise-1/env/level", Action::Read);
    assert_eq!(alice.matched.as_deref(), Some("p, dashboard, noise-*, read"));
    assert_eq!(alice.line, Some(4));
    let admin = engine.explain(&who("ci", &["admin"]), "policy", Action::Admin);
    assert_eq!(admin.matched.as_deref(), Some("p, admin, *, *"));
    assert_eq!(admin.line, Some(2));
    let health = engine.explain(&Principal::anonymous(), "system:health", Action::Read);
    assert_eq!(
        health,
        Explanation { allowed: true, matched: Some("p, anonymous, system:health, read".into()), line: Some(3) }
    );
}

#[tokio::test]
async fn replace_applies_at_once_even_to_cached_decisions() {
    let engine = PolicyEngine::new("p, dashboard, noise-*, read").unwrap();
    let grafana = who("grafana", &["dashboard"]);
    assert!(engine.check(&grafana, "noise-1", Action::Read));
    assert!(!engine.check(&Principal::anonymous(), "system:health", Action::Read));
    assert!(engine.cached_decisions() >= 2);

    let next = "p, anonymous, system:health, read\np, dashboard, traffic-*, read";
    engine.replace(next).await.unwrap();
    assert_eq!(engine.version(), 2);
    assert_eq!(engine.text(), next);
    assert_eq!(engine.cached_decisions(), 0);
    assert!(!engine.check(&grafana, "noise-1", Action::Read));
    assert!(engine.check(&grafana, "traffic-1", Action::Read));
    assert!(engine.check(&Principal::anonymous(), "system:health", Action::Read));
}

#[tokio::test]
async fn an_invalid_replacement_names_the_line_and_keeps_the_old_policy() {
    let engine = PolicyEngine::new(GOLDEN_POLICY).unwrap();
    assert!(engine.check(&Principal::anonymous(), "system:health", Action::Read));
    let bad = "p, admin, *, *\n# fine so far\np, anonymous, *, delete\n";
    let err = engine.replace(bad).await.unwrap_err();
    assert!(matches!(err, PolicyError::InvalidPolicy { line: 3, .. }), "{err}");
    assert!(PolicyEngine::validate(bad).is_err());
    assert!(PolicyEngine::validate(GOLDEN_POLICY).is_ok());
    assert_eq!(engine.version(), 1);
    assert_eq!(engine.text(), GOLDEN_POLICY);
    assert!(engine.check(&Principal::anonymous(), "system:health", Action::Read));
    assert!(!engine.check(&Principal::anonymous(), "noise-1", Action::Read));
}

#[test]
fn an_empty_policy_denies_everything() {
    let engine = PolicyEngine::new("# nothing allowed\n").unwrap();
    for &object in EVERY_KIND_OF_OBJECT.iter().chain(&["", "*"]) {
        for action in Action::ALL {
            assert!(!engine.check(&who("admin", &["admin"]), object, action));
            assert!(!engine.check(&who("", &[""]), object, action));
        }
    }
    assert!(!engine.explain(&who("admin", &[]), "policy", Action::Read).allowed);
}

#[test]
fn oversized_objects_and_names_are_denied() {
    let engine = PolicyEngine::new(DEFAULT_POLICY).unwrap();
    let long_object = "a".repeat(MAX_OBJECT_LEN + 1);
    assert!(!engine.check(&who("admin", &[]), &long_object, Action::Read));
    assert!(!engine.explain(&who("admin", &[]), &long_object, Action::Read).allowed);
    assert!(engine.check(&who("admin", &[]), &"a".repeat(MAX_OBJECT_LEN), Action::Read));
    let long_name = "a".repeat(MAX_NAME_LEN + 1);
    assert!(!engine.check(&who(&long_name, &[]), "policy", Action::Read));
    assert!(engine.check(&who(&long_name, &["admin"]), "policy", Action::Read));
}

#[test]
fn role_cycles_terminate() {
    let engine = PolicyEngine::new("g, a, b\ng, b, a\ng, b, c\np, c, x, read").unwrap();
    assert!(engine.check(&who("a", &[]), "x", Action::Read));
    assert!(!engine.check(&who("a", &[]), "y", Action::Read));
    assert_eq!(engine.explain(&who("b", &[]), "x", Action::Read).line, Some(4));
}

#[test]
fn the_cache_stays_bounded() {
    let engine = PolicyEngine::with_cache_capacity("p, reader, *, read", 50).unwrap();
    let reader = who("reader", &[]);
    for i in 0..1_000 {
        assert!(engine.check(&reader, &format!("noise-{i}/env/level"), Action::Read));
        assert!(engine.cached_decisions() <= 50);
    }
    // Still right after many clears.
    assert!(engine.check(&reader, "noise-1/env/level", Action::Read));
    assert!(!engine.check(&reader, "noise-1/env/level", Action::Write));
}

#[test]
fn concurrent_checks_during_replacements_converge() {
    let policy_a = "p, dashboard, noise-*, read\np, admin, *, *";
    let policy_b = "p, dashboard, traffic-*, read\np, admin, *, *";
    let engine = Arc::new(PolicyEngine::new(policy_a).unwrap());
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let done = AtomicBool::new(false);
    let progress = AtomicUsize::new(0);
    let grafana = who("grafana", &["dashboard"]);

    std::thread::scope(|scope| {
        let checkers: Vec<_> = (0..4)
            .map(|_| {
                let (engine, grafana, done, progress) = (&engine, &grafana, &done, &progress);
                scope.spawn(move || {
                    let mut checks = 0u64;
                    loop {
                        // Either answer is right while replacements race; it must simply not fail.
                        engine.check(grafana, "noise-1/env/level", Action::Read);
                        engine.check(grafana, "traffic-1/env/level", Action::Read);
                        assert!(engine.check(&who("admin", &[]), "policy", Action::Admin));
                        assert!(!engine.check(&Principal::anonymous(), "noise-1", Action::Read));
                        checks += 1;
                        progress.fetch_add(1, Ordering::Relaxed);
                        if done.load(Ordering::Acquire) {
                            return checks;
                        }
                    }
                })
            })
            .collect();
        for i in 0..50 {
            // Let the checkers make progress between replacements, so checks really interleave with swaps.
            let seen = progress.load(Ordering::Relaxed);
            while progress.load(Ordering::Relaxed) < seen + 4 && !checkers.iter().any(|c| c.is_finished()) {
                std::thread::yield_now();
            }
            let text = if i % 2 == 0 { policy_b } else { policy_a };
            runtime.block_on(engine.replace(text)).unwrap();
        }
        done.store(true, Ordering::Release);
        for checker in checkers {
            assert!(checker.join().unwrap() > 0);
        }
    });

    // The last replacement installed policy_a (i = 49); every thread now sees it.
    assert_eq!(engine.version(), 51);
    assert_eq!(engine.text(), policy_a);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                assert!(engine.check(&grafana, "noise-1/env/level", Action::Read));
                assert!(!engine.check(&grafana, "traffic-1/env/level", Action::Read));
            });
        }
    });
}

#[test]
fn concurrent_replacements_count_every_version() {
    let engine = PolicyEngine::new(DEFAULT_POLICY).unwrap();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
                for _ in 0..10 {
                    runtime.block_on(engine.replace(DEFAULT_POLICY)).unwrap();
                }
            });
        }
    });
    assert_eq!(engine.version(), 41);
}

#[test]
fn explain_works_without_role_lines() {
    let engine = PolicyEngine::new("\n# only admin\np, admin, *, *").unwrap();
    let explanation = engine.explain(&who("admin", &[]), "noise-1", Action::Write);
    assert_eq!(explanation.matched.as_deref(), Some("p, admin, *, *"));
    assert_eq!(explanation.line, Some(3));
    assert_eq!(engine.explain(&who("bob", &[]), "noise-1", Action::Write).line, None);
}

#[test]
fn replace_futures_can_cross_threads() {
    fn assert_send<T: Send>(_: &T) {}
    let engine = PolicyEngine::new(DEFAULT_POLICY).unwrap();
    let future = engine.replace(DEFAULT_POLICY);
    assert_send(&future);
}
