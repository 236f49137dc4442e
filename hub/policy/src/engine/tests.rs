use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicUsize},
};

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
    assert!(health.allowed);
    assert_eq!(health.matched.as_deref(), Some("p, anonymous, system:health, read"));
    assert_eq!(health.line, Some(3));
    assert_eq!(health.reason, "a permission allows it");
    assert_eq!(health.domain, "local");
    assert!(health.labels.class.is_none() && health.attributes.is_none());
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
    assert!(engine.validate(bad).is_err());
    assert!(engine.validate(GOLDEN_POLICY).is_ok());
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

/// The Santander hub's policy for the attribute table below.
const CITY_POLICY: &str = "\
p, admin, *, *
p, officer@fujisawa, water-*, read
p, officer@fujisawa, quake-*, read
p, citizen-app, care-*, read
s, env-staff, department, environment
s, dp-staff, department, disaster-prevention
s, dp-staff, clearance, 3
s, officer@fujisawa, department, environment
g, ana, env-staff
g, pablo, dp-staff
g, nina, nurse
o, air-*, class, open
o, water-*, class, closed
o, quake-*, class, confidential
o, quake-*, clearance, 2
o, quake-*, department, disaster-prevention
o, care-*, class, personal
o, care-1*, owner, erin
c, erin, nurse, care-1*
";

fn with_attributes(subject: &str, roles: &[&str], departments: &[&str], clearance: Option<u8>) -> Principal {
    who(subject, roles)
        .with_attributes(Attributes { departments: departments.iter().map(|d| (*d).to_owned()).collect(), clearance })
}

#[test]
fn attribute_table_department_clearance_and_class() {
    let engine = PolicyEngine::with_domain(CITY_POLICY, "santander", 1000).unwrap();
    let ana = who("ana", &[]); // environment, clearance 0
    let pablo = who("pablo", &[]); // disaster prevention, clearance 3
    let fuji_officer = who("kenji@fujisawa", &["officer@fujisawa"]); // environment by s line
    let fuji_cleared = with_attributes("yuki@fujisawa", &["officer@fujisawa"], &["disaster-prevention"], Some(2));
    let citizen = who("carlos", &["citizen-app"]);
    let erin = who("erin", &[]);
    let nina = who("nina", &[]);
    let admin = who("admin", &[]);
    let anonymous = Principal::anonymous();
    // (who, object, expected read)
    let table: &[(&Principal, &str, bool)] = &[
        // Open data: everyone, anonymous included, with or without a permission.
        (&anonymous, "air-1/no2/value", true),
        (&citizen, "air-1/no2/value", true),
        (&fuji_officer, "air-1/no2/value", true),
        // Closed data: City Hall staff of Santander; partner staff only with a permission; never citizens.
        (&ana, "water-1/ph/value", true),
        (&pablo, "water-1/ph/value", true),
        (&fuji_officer, "water-1/ph/value", true),
        (&citizen, "water-1/ph/value", false),
        (&anonymous, "water-1/ph/value", false),
        (&admin, "water-1/ph/value", false), // a permission is not a department
        // Confidential data: clearance >= 2 and the disaster-prevention department.
        (&pablo, "quake-1/accel/value", true),
        (&ana, "quake-1/accel/value", false),
        (&fuji_officer, "quake-1/accel/value", false),
        (&fuji_cleared, "quake-1/accel/value", true),
        (
            &with_attributes("yuki@fujisawa", &["officer@fujisawa"], &["disaster-prevention"], Some(1)),
            "quake-1/accel/value",
            false,
        ),
        (&with_attributes("rui@fujisawa", &[], &["disaster-prevention"], Some(3)), "quake-1/accel/value", false),
        (&admin, "quake-1/accel/value", false),
        // Personal data: the owner, and whom the owner granted; a permission is not enough.
        (&erin, "care-12/heart/rate", true),
        (&nina, "care-12/heart/rate", true),
        (&citizen, "care-12/heart/rate", false),
        (&admin, "care-12/heart/rate", false),
        (&erin, "care-2/heart/rate", false), // not hers: care-2 has no owner
        (&who("erin@fujisawa", &[]), "care-12/heart/rate", false), // another domain's erin
        // Unclassified data: permissions alone.
        (&admin, "traffic-1/count/value", true),
        (&ana, "traffic-1/count/value", false),
    ];
    for round in 0..2 {
        for &(principal, object, expected) in table {
            assert_eq!(
                engine.check(principal, object, Action::Read),
                expected,
                "round {round}: {principal:?} {object}"
            );
            let explanation = engine.explain(principal, object, Action::Read);
            assert_eq!(explanation.allowed, expected, "{principal:?} {object}: {explanation:?}");
        }
    }
    // Classes bound reads only: the admin still manages classified objects.
    assert!(engine.check(&admin, "quake-1/accel/value", Action::Write));
    assert!(engine.check(&admin, "care-12/heart/rate", Action::Admin));
    assert!(!engine.check(&nina, "care-12/heart/rate", Action::Write));
}

#[test]
fn explanations_name_the_deciding_rule() {
    let engine = PolicyEngine::with_domain(CITY_POLICY, "santander", 1000).unwrap();
    let ana = engine.explain(&who("ana", &[]), "quake-1/accel/value", Action::Read);
    assert!(!ana.allowed);
    assert_eq!(ana.reason, "confidential data needs clearance 2; this subject has 0");
    assert_eq!(ana.labels.class.as_ref().unwrap().origin, crate::LabelOrigin::Policy(14));
    assert_eq!(ana.labels.clearance.as_ref().unwrap().value, 2);
    assert_eq!(ana.attributes.as_ref().unwrap().departments, ["environment"]);
    assert_eq!(ana.domain, "santander");

    let nina = engine.explain(&who("nina", &[]), "care-12/heart/rate", Action::Read);
    assert!(nina.allowed);
    assert_eq!(nina.matched.as_deref(), Some("c, erin, nurse, care-1*"));
    assert_eq!(nina.line, Some(19));

    let officer = engine.explain(&who("kenji@fujisawa", &["officer@fujisawa"]), "water-1/ph/value", Action::Read);
    assert!(officer.allowed);
    assert_eq!(officer.matched.as_deref(), Some("p, officer@fujisawa, water-*, read"));
    assert_eq!(officer.domain, "fujisawa");

    let foreigner = engine.explain(&who("rui@fujisawa", &[]), "water-1/ph/value", Action::Read);
    assert!(!foreigner.allowed);
    assert!(foreigner.reason.contains("has no department"), "{}", foreigner.reason);

    let nobody = engine.explain(&who("ana", &[]), "traffic-1/count/value", Action::Read);
    assert_eq!(nobody.reason, "no permission allows read on traffic-1/count/value for this subject or its roles");
}

#[test]
fn roles_and_permissions_are_per_domain() {
    let policy = "\
g, alice, officer, fujisawa
p, officer@fujisawa, air-*, read
p, officer, water-*, read
";
    let engine = PolicyEngine::with_domain(policy, "santander", 1000).unwrap();
    // Fujisawa's alice is an officer of Fujisawa (through the g line), Santander's alice is not.
    assert!(engine.check(&who("alice@fujisawa", &[]), "air-1", Action::Read));
    assert!(!engine.check(&who("alice", &[]), "air-1", Action::Read));
    // A Santander officer reads water, a Fujisawa officer does not.
    assert!(engine.check(&who("bob", &["officer"]), "water-1", Action::Read));
    assert!(engine.check(&who("bob@santander", &["officer@santander"]), "water-1", Action::Read));
    assert!(!engine.check(&who("bob@fujisawa", &["officer@fujisawa"]), "water-1", Action::Read));
    assert!(engine.check(&who("bob@fujisawa", &["officer@fujisawa"]), "air-1", Action::Read));
    // A role of one domain carried by a subject of another still counts only in its own domain.
    assert!(!engine.check(&who("eve@tokyo", &["officer@tokyo"]), "air-1", Action::Read));
}

/// Labels from a fixed table, standing in for the live model's metadata.
struct FixedLabels(Vec<(&'static str, crate::Labels)>);

impl crate::LabelSource for FixedLabels {
    fn labels(&self, object: &str) -> crate::Labels {
        self.0.iter().find(|(o, _)| *o == object).map(|(_, l)| l.clone()).unwrap_or_default()
    }
}

#[test]
fn metadata_labels_fill_what_the_policy_leaves_unset() {
    let engine = PolicyEngine::with_domain(CITY_POLICY, "santander", 1000).unwrap();
    engine.set_label_source(Arc::new(FixedLabels(vec![
        ("bench-1/seat/occupied", crate::Labels::from_metadata(Some("open"), None, None, None)),
        ("care-2/heart/rate", crate::Labels::from_metadata(Some("open"), None, None, Some("frank"))),
        ("traffic-2/count/value", crate::Labels::from_metadata(Some("secret"), None, None, None)),
    ])));
    // Metadata classifies an object the policy does not.
    assert!(engine.check(&Principal::anonymous(), "bench-1/seat/occupied", Action::Read));
    // The policy's class wins over metadata, whose owner fills the gap.
    assert!(!engine.check(&Principal::anonymous(), "care-2/heart/rate", Action::Read));
    assert!(engine.check(&who("frank", &[]), "care-2/heart/rate", Action::Read));
    let why = engine.explain(&who("frank", &[]), "care-2/heart/rate", Action::Read);
    assert_eq!(why.labels.owner.unwrap().origin, crate::LabelOrigin::Metadata);
    // An invalid class in metadata fails closed, even for the admin's permission.
    assert!(!engine.check(&who("admin", &[]), "traffic-2/count/value", Action::Read));
    assert!(engine.check(&who("admin", &[]), "traffic-1/count/value", Action::Read));
}

fn grant(id: &str, owner: &str, grantee: &str, objects: &str, actions: &[Action], expires: Option<i64>) -> Grant {
    Grant {
        id: id.into(),
        owner: owner.into(),
        grantee: grantee.into(),
        objects: objects.into(),
        actions: actions.to_vec(),
        expires,
    }
}

#[test]
fn consents_given_at_run_time_apply_at_once_and_only_to_their_owner() {
    let engine = PolicyEngine::with_domain(CITY_POLICY, "santander", 1000).unwrap();
    engine.set_label_source(Arc::new(FixedLabels(vec![
        ("care-2/heart/rate", crate::Labels::from_metadata(None, None, None, Some("frank@santander"))),
        ("care-2/alarm/siren", crate::Labels::from_metadata(None, None, None, Some("frank"))),
        ("care-3/heart/rate", crate::Labels::from_metadata(None, None, None, Some("gina"))),
    ])));
    let carer = who("carl", &["carer"]);
    assert!(!engine.check(&carer, "care-2/heart/rate", Action::Read));
    let hour_ahead = crate::consent::now_micros() + 3_600_000_000;
    engine.set_grants([
        grant("c1", "frank", "carer", "care-2/*", &[Action::Read, Action::Act], Some(hour_ahead)),
        grant("c2", "frank", "carl", "care-3/*", &[Action::Read], None),
    ]);
    assert_eq!(engine.grant_count(), 2);
    // A role grantee, the owner's metadata spelled with the hub's domain.
    assert!(engine.check(&carer, "care-2/heart/rate", Action::Read));
    let why = engine.explain(&carer, "care-2/heart/rate", Action::Read);
    assert!(why.allowed);
    assert!(why.matched.unwrap().starts_with("consent c1:"));
    assert!(why.reason.contains("consent c1"), "{}", why.reason);
    // Act on the owner's action resource without any permission; write was not granted.
    assert!(engine.check(&carer, "care-2/alarm/siren", Action::Act));
    assert!(!engine.check(&carer, "care-2/alarm/siren", Action::Write));
    // frank cannot give away gina's data, whatever the pattern says.
    assert!(!engine.check(&carer, "care-3/heart/rate", Action::Read));
    assert!(!engine.check(&who("carl", &[]), "care-3/heart/rate", Action::Read));
    // Nobody else gains anything.
    assert!(!engine.check(&who("dora", &[]), "care-2/heart/rate", Action::Read));
    // Revoked: the next check is denied.
    engine.set_grants([]);
    assert!(!engine.check(&carer, "care-2/heart/rate", Action::Read));
    assert!(!engine.check(&carer, "care-2/alarm/siren", Action::Act));
    // Expired: denied without anyone removing it.
    engine.set_grants([grant("c3", "frank", "carer", "care-2/*", &[Action::Read], Some(1))]);
    assert!(!engine.check(&carer, "care-2/heart/rate", Action::Read));
}

#[test]
fn owners_are_compared_by_canonical_name_and_consents_cover_resources_only() {
    let engine = PolicyEngine::with_domain("o, care-*, class, personal\n", "santander", 1000).unwrap();
    engine.set_label_source(Arc::new(FixedLabels(vec![
        ("care-2/heart/rate", crate::Labels::from_metadata(None, None, None, Some("frank@santander"))),
        ("care-2", crate::Labels::from_metadata(None, None, None, Some("frank"))),
    ])));
    assert!(engine.check(&who("frank", &[]), "care-2/heart/rate", Action::Read), "the owner, however spelled");
    engine.set_grants([grant("c1", "frank", "carl", "care-2*", &[Action::Read, Action::Write], None)]);
    assert!(engine.check(&who("carl", &[]), "care-2/heart/rate", Action::Write));
    assert!(!engine.check(&who("carl", &[]), "care-2", Action::Write), "a consent never covers the model");
}
