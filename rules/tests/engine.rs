//! Evaluation tests with a controlled clock: edges, `for`, windows, hysteresis, schedules, bindings,
//! provider status, cooldown, seeding and the engine's bookkeeping.

use hub_model::{Name, ResourcePath, Timestamp, Update};
use hub_rules::{Action, Branch, Cause, Engine, Firing, RuleError, parse};
use serde_json::{Value, json};

const S: i64 = 1_000_000;
const M: i64 = 60 * S;
const H: i64 = 60 * M;
const D: i64 = 24 * H;

fn engine(src: &str) -> Engine {
    let mut e = Engine::new();
    for rule in parse(src).unwrap() {
        e.deploy(rule).unwrap();
    }
    e
}

fn path(p: &str) -> ResourcePath {
    p.parse().unwrap()
}

fn update(p: &str, value: Value, t: i64) -> Update {
    Update { path: path(p), value, timestamp: Timestamp::from_micros(t) }
}

fn feed(e: &mut Engine, p: &str, value: Value, t: i64) -> Vec<Firing> {
    let mut out = Vec::new();
    e.on_update(&update(p, value, t), &mut |f| out.push(f));
    out
}

fn tick(e: &mut Engine, t: i64) -> Vec<Firing> {
    let mut out = Vec::new();
    e.tick(Timestamp::from_micros(t), &mut |f| out.push(f));
    out
}

fn topics(firings: &[Firing]) -> Vec<String> {
    firings
        .iter()
        .flat_map(|f| &f.actions)
        .map(|a| match a {
            Action::Publish { topic, .. } => topic.clone(),
            other => format!("{other:?}"),
        })
        .collect()
}

const PARK_NOISE: &str = r#"
rule park_noise
  when noise-12/sound/level > 70 for 5m
   and avg(noise-12/sound/level, 10m) > 65
  then act city-hall/alerts/notify(message = "noise at noise-12: {value} dB")
       set noise-12/sign/display = "quiet please"
end"#;

#[test]
fn for_fires_when_the_duration_has_elapsed_and_explains_why() {
    let mut e = engine(PARK_NOISE);
    assert!(feed(&mut e, "noise-12/sound/level", json!(72), 0).is_empty());
    assert!(feed(&mut e, "noise-12/sound/level", json!(75), M).is_empty());
    assert_eq!(e.next_deadline(), Some(Timestamp::from_micros(5 * M)));
    assert!(tick(&mut e, 5 * M - 1).is_empty());
    let fired = tick(&mut e, 5 * M);
    assert_eq!(fired.len(), 1);
    let f = &fired[0];
    assert_eq!((f.rule.as_str(), f.branch, f.at), ("park_noise", Branch::Then, Timestamp::from_micros(5 * M)));
    assert_eq!(f.cause, Cause::Timer);
    assert_eq!(
        f.actions,
        vec![
            Action::Act {
                path: path("city-hall/alerts/notify"),
                params: json!({"message": "noise at noise-12: 75 dB"}).as_object().unwrap().clone(),
            },
            Action::Set { path: path("noise-12/sign/display"), value: json!("quiet please") },
        ]
    );
    let evidence: Vec<(&str, &Value)> = f.evidence.iter().map(|e| (e.what.as_str(), &e.value)).collect();
    assert_eq!(evidence, vec![("noise-12/sound/level", &json!(75)), ("avg(noise-12/sound/level, 10m)", &json!(73.5))]);
    // Still true: no new edge.
    assert!(feed(&mut e, "noise-12/sound/level", json!(80), 6 * M).is_empty());
    // Drops, then holds again for five minutes.
    assert!(feed(&mut e, "noise-12/sound/level", json!(60), 7 * M).is_empty());
    assert!(feed(&mut e, "noise-12/sound/level", json!(71), 8 * M).is_empty());
    assert!(tick(&mut e, 13 * M - 1).is_empty());
    assert_eq!(tick(&mut e, 13 * M).len(), 1);
    let stats = e.stats("park_noise").unwrap();
    assert_eq!((stats.firings, stats.instances), (2, 1));
    assert_eq!(stats.last_fired, Some(Timestamp::from_micros(13 * M)));
}

#[test]
fn updates_run_due_timers_first_so_for_fires_at_its_deadline() {
    let mut e = engine(PARK_NOISE);
    feed(&mut e, "noise-12/sound/level", json!(72), 0);
    // No tick: the next update comes late, and the firing still happens at the deadline.
    let fired = feed(&mut e, "noise-12/sound/level", json!(73), 7 * M);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].at, Timestamp::from_micros(5 * M));
    assert_eq!(fired[0].cause, Cause::Timer);
}

#[test]
fn conditions_are_edge_triggered_with_an_else_on_the_falling_edge() {
    let mut e = engine(r#"rule loud when s/x/level > 70 then publish "loud {value}" else publish "calm {value}" end"#);
    let mut seen = Vec::new();
    for (t, v) in [(1, 60), (2, 75), (3, 80), (4, 65), (5, 50), (6, 71)] {
        seen.extend(topics(&feed(&mut e, "s/x/level", json!(v), t * S)));
    }
    assert_eq!(seen, ["loud 75", "calm 65", "loud 71"]);
}

#[test]
fn time_windows_expire_without_updates() {
    let mut e = engine(r#"rule win when avg(s/x/v, 10m) > 50 then publish "high" else publish "low" end"#);
    assert_eq!(topics(&feed(&mut e, "s/x/v", json!(60), 0)), ["high"]);
    assert_eq!(topics(&feed(&mut e, "s/x/v", json!(50), 2 * M)), Vec::<String>::new());
    // At 10m the first sample leaves: the average becomes 50, no longer above.
    let fired = tick(&mut e, 10 * M);
    assert_eq!(topics(&fired), ["low"]);
    assert_eq!(fired[0].at, Timestamp::from_micros(10 * M));
    assert_eq!(fired[0].evidence[0].value, json!(50));
}

#[test]
fn count_windows_and_aggregates() {
    let mut e = engine(
        r#"
rule peak when max(s/x/v, 3 samples) > 10 then publish "peak" else publish "flat" end
rule stats
  on update s/x/v
  then publish "sum={sum(s/x/v, 3 samples)} min={min(s/x/v, 3 samples)} n={count(s/x/v, 1h)} d={delta(s/x/v, 1h)} r={rate(s/x/v, 1h)}"
end"#,
    );
    let mut seen = Vec::new();
    for (t, v) in [(0, 11), (10, 1), (20, 2), (30, 3)] {
        seen.extend(topics(&feed(&mut e, "s/x/v", json!(v), t * S)));
    }
    assert_eq!(
        seen,
        [
            "peak",
            "sum=11 min=11 n=1 d=unknown r=unknown",
            "sum=12 min=1 n=2 d=-10 r=-1",
            "sum=14 min=1 n=3 d=-9 r=-0.45",
            "flat",
            "sum=6 min=1 n=4 d=-8 r=-0.26666666666666666",
        ]
    );
}

#[test]
fn hysteresis_switches_on_above_and_off_below() {
    let mut e = engine(r#"rule sign when s/x/level above 70 until below 65 then publish "on" else publish "off" end"#);
    let mut seen = Vec::new();
    for (t, v) in [(1, 68), (2, 71), (3, 67), (4, 65), (5, 64), (6, 66), (7, 72)] {
        seen.extend(topics(&feed(&mut e, "s/x/level", json!(v), t * S)).into_iter().map(|s| format!("{v}:{s}")));
    }
    assert_eq!(seen, ["71:on", "64:off", "72:on"]);
}

#[test]
fn schedules_fire_on_their_grid_and_coalesce_missed_runs() {
    let mut e = engine(r#"rule nightly every 1d at 02:00 then publish "daily {time}" end"#);
    let day = 20_000 * D;
    assert!(tick(&mut e, day).is_empty());
    assert_eq!(e.next_deadline(), Some(Timestamp::from_micros(day + 2 * H)));
    assert!(tick(&mut e, day + 2 * H - 1).is_empty());
    let fired = tick(&mut e, day + 2 * H);
    assert_eq!(topics(&fired), [format!("daily {}", Timestamp::from_micros(day + 2 * H).to_rfc3339())]);
    assert_eq!(fired[0].cause, Cause::Schedule);
    assert!(tick(&mut e, day + 2 * H).is_empty());
    // The hub slept for three days: one firing for the first missed run, then back on the grid.
    let fired = tick(&mut e, day + 3 * D + 5 * H);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].at, Timestamp::from_micros(day + D + 2 * H));
    assert_eq!(e.next_deadline(), Some(Timestamp::from_micros(day + 4 * D + 2 * H)));
}

#[test]
fn schedules_with_a_guard_take_the_else_branch() {
    let mut e = engine(
        r#"rule quarter every 15m if p/lot/free < 10 then publish "almost full" else publish "{p/lot/free} free" end"#,
    );
    tick(&mut e, 0);
    feed(&mut e, "p/lot/free", json!(30), M);
    assert_eq!(topics(&tick(&mut e, 15 * M)), ["30 free"]);
    feed(&mut e, "p/lot/free", json!(3), 16 * M);
    assert_eq!(topics(&tick(&mut e, 30 * M)), ["almost full"]);
}

const ANY_FALL: &str = r#"
rule any_fall
  when $home/fall/detected == true
  then act $home/alarm/siren(seconds = 30)
       notify "https://care.example/hooks" with {home = $home}
end"#;

#[test]
fn variables_create_one_instance_per_provider_including_later_ones() {
    let mut e = engine(ANY_FALL);
    assert_eq!(e.stats("any_fall").unwrap().instances, 0);
    assert!(feed(&mut e, "home-1/fall/detected", json!(false), S).is_empty());
    let fired = feed(&mut e, "home-2/fall/detected", json!(true), 2 * S);
    assert_eq!(fired.len(), 1);
    let f = &fired[0];
    assert_eq!(f.bindings.get("home").map(Name::as_str), Some("home-2"));
    assert_eq!(
        f.actions,
        vec![
            Action::Act {
                path: path("home-2/alarm/siren"),
                params: json!({"seconds": 30}).as_object().unwrap().clone()
            },
            Action::Notify { url: "https://care.example/hooks".into(), body: json!({"home": "home-2"}), retries: None },
        ]
    );
    assert_eq!(f.cause, Cause::Update { path: path("home-2/fall/detected"), value: json!(true) });
    // home-1's own instance fires on its own edge.
    assert_eq!(feed(&mut e, "home-1/fall/detected", json!(true), 3 * S).len(), 1);
    // A provider that did not exist when the rule was deployed.
    let fired = feed(&mut e, "home-9/fall/detected", json!(true), 4 * S);
    assert_eq!(fired[0].bindings.get("home").map(Name::as_str), Some("home-9"));
    assert_eq!(e.stats("any_fall").unwrap().instances, 3);
    let bound: Vec<String> = e.instances("any_fall").iter().map(|b| b["home"].to_string()).collect();
    assert_eq!(bound, ["home-1", "home-2", "home-9"]);
}

#[test]
fn rules_deployed_later_bind_resources_already_seen_and_globs_filter() {
    let mut e = Engine::new();
    feed(&mut e, "noise-1/sound/level", json!(50), S);
    feed(&mut e, "park-1/sound/level", json!(50), S);
    let rule = parse(r#"rule n when $p:noise-*/sound/level > 70 then publish "{$p}" end"#).unwrap();
    e.deploy(rule.into_iter().next().unwrap()).unwrap();
    assert_eq!(e.instances("n").len(), 1);
    assert_eq!(topics(&feed(&mut e, "noise-1/sound/level", json!(80), 2 * S)), ["noise-1"]);
    assert!(feed(&mut e, "park-1/sound/level", json!(80), 2 * S).is_empty());
    assert_eq!(topics(&feed(&mut e, "noise-2/sound/level", json!(80), 3 * S)), ["noise-2"]);
}

#[test]
fn variables_bound_in_service_and_resource_segments() {
    let mut e = engine(r#"rule any when site.a/$svc/$res > 30 then publish "{$svc}/{$res}={value}" end"#);
    assert_eq!(topics(&feed(&mut e, "site.a/env.v2/temp.c", json!(31.5), S)), ["env.v2/temp.c=31.5"]);
    assert_eq!(topics(&feed(&mut e, "site.a/hum/rel", json!(40), S)), ["hum/rel=40"]);
    assert!(feed(&mut e, "site.b/env.v2/temp.c", json!(40), S).is_empty());
}

#[test]
fn provider_status_triggers_fire_on_transitions() {
    let mut e = engine(
        r#"
rule lost on offline $truck:truck-* then publish "offline {$truck}" end
rule back on online truck-7 then publish "truck-7 is online" end"#,
    );
    // The first status seen is a transition too (from nothing).
    assert_eq!(topics(&feed(&mut e, "truck-7/admin/status", json!("online"), S)), ["truck-7 is online"]);
    assert_eq!(topics(&feed(&mut e, "truck-7/admin/status", json!("offline"), 2 * S)), ["offline truck-7"]);
    assert!(feed(&mut e, "truck-7/admin/status", json!("offline"), 3 * S).is_empty());
    let mut out = Vec::new();
    e.on_provider_status(&Name::new("truck-8").unwrap(), false, Timestamp::from_micros(4 * S), &mut |f| out.push(f));
    assert_eq!(topics(&out), ["offline truck-8"]);
    assert_eq!(out[0].cause, Cause::Status { provider: Name::new("truck-8").unwrap(), online: false });
    assert!(feed(&mut e, "bus-1/admin/status", json!("offline"), 5 * S).is_empty());
    assert_eq!(topics(&feed(&mut e, "truck-7/admin/status", json!("online"), 6 * S)), ["truck-7 is online"]);
}

#[test]
fn on_change_ignores_repeats_and_on_update_takes_every_update() {
    let mut e = engine(
        r#"
rule c on change p/s/r then publish "changed {prev(p/s/r)} -> {value}" end
rule u on update p/s/r if value > 1 then publish "big" else publish "small" end"#,
    );
    let mut seen = Vec::new();
    for (t, v) in [(1, 1), (2, 1), (3, 2)] {
        seen.extend(topics(&feed(&mut e, "p/s/r", json!(v), t * S)));
    }
    seen.sort();
    assert_eq!(seen, ["big", "changed 1 -> 2", "small", "small"]);
}

#[test]
fn cooldown_suppresses_then_firings() {
    let mut e = engine(r#"rule cd on update p/s/r cooldown 10m then publish "x" end"#);
    assert_eq!(feed(&mut e, "p/s/r", json!(1), 0).len(), 1);
    assert_eq!(feed(&mut e, "p/s/r", json!(2), M).len(), 0);
    assert_eq!(feed(&mut e, "p/s/r", json!(3), 10 * M).len(), 1);
    assert_eq!(e.stats("cd").unwrap().suppressed, 1);
}

#[test]
fn seeded_values_count_without_firing() {
    let mut e = engine(r#"rule both when p/s/a > 1 and p/s/b > 1 then publish "both" end"#);
    e.seed(&update("p/s/a", json!(5), S));
    e.seed(&update("p/s/b", json!(0), S));
    assert_eq!(e.stats("both").unwrap().evaluations, 0);
    assert_eq!(topics(&feed(&mut e, "p/s/b", json!(2), 2 * S)), ["both"]);
}

#[test]
fn stale_updates_are_ignored() {
    let mut e = engine(r#"rule r when p/s/r > 10 then publish "x" end"#);
    feed(&mut e, "p/s/r", json!(5), 10 * S);
    assert!(feed(&mut e, "p/s/r", json!(100), 5 * S).is_empty());
    assert_eq!(e.engine_stats().stale_updates, 1);
    assert_eq!(feed(&mut e, "p/s/r", json!(100), 11 * S).len(), 1);
}

#[test]
fn unknown_values_skip_the_action_and_say_why() {
    let mut e = engine(r#"rule r when p/s/a > 1 then set p/s/b = avg(p/s/c, 1m) publish "ok" end"#);
    let fired = feed(&mut e, "p/s/a", json!(2), S);
    assert_eq!(topics(&fired), ["ok"]);
    assert_eq!(fired[0].skipped.len(), 1);
    assert!(fired[0].skipped[0].contains("unknown"), "{:?}", fired[0].skipped);
}

#[test]
fn disable_enable_and_remove() {
    let mut e = engine(r#"rule r when p/s/r > 10 then publish "x" end"#);
    e.disable("r").unwrap();
    assert!(feed(&mut e, "p/s/r", json!(20), S).is_empty());
    assert!(!e.stats("r").unwrap().enabled);
    e.enable("r").unwrap();
    // Enabling starts afresh: the next update that finds the condition true fires.
    assert_eq!(feed(&mut e, "p/s/r", json!(21), 2 * S).len(), 1);
    let removed = e.remove("r").unwrap();
    assert_eq!(removed.name.as_str(), "r");
    assert!(e.stats("r").is_none());
    assert!(feed(&mut e, "p/s/r", json!(5), 3 * S).is_empty());
    assert!(matches!(e.remove("r"), Err(RuleError::NotFound(_))));
    assert!(matches!(e.enable("r"), Err(RuleError::NotFound(_))));
}

#[test]
fn deploy_refuses_invalid_and_duplicate_rules() {
    let mut e = Engine::new();
    let invalid = parse(r#"rule r when p/s/r > 1 then act $x/a/b() end"#).unwrap().remove(0);
    let err = e.deploy(invalid).unwrap_err();
    assert!(matches!(&err, RuleError::Invalid { diagnostics, .. } if !diagnostics.is_empty()), "{err}");
    let rule = parse(r#"rule r when p/s/r > 1 then publish "x" end"#).unwrap().remove(0);
    e.deploy(rule.clone()).unwrap();
    assert!(matches!(e.deploy(rule), Err(RuleError::AlreadyDeployed(_))));
    assert_eq!(e.rules().count(), 1);
    assert!(e.rule("r").is_some());
}

#[test]
fn deleting_a_provider_drops_its_instances() {
    let mut e = engine(ANY_FALL);
    feed(&mut e, "home-1/fall/detected", json!(false), S);
    feed(&mut e, "home-2/fall/detected", json!(false), S);
    e.on_provider_deleted(&Name::new("home-1").unwrap());
    let bound: Vec<String> = e.instances("any_fall").iter().map(|b| b["home"].to_string()).collect();
    assert_eq!(bound, ["home-2"]);
    // It comes back as a new provider.
    assert_eq!(feed(&mut e, "home-1/fall/detected", json!(true), 2 * S).len(), 1);
}

#[test]
fn default_envelope_and_serialisation() {
    let mut e = engine(r#"rule r on update $p/s/r then notify "https://x.example/{$p}" retries 2 end"#);
    let fired = feed(&mut e, "dev-1/s/r", json!(4.5), 1_700_000_000 * S);
    let Action::Notify { url, body, retries } = &fired[0].actions[0] else { panic!() };
    assert_eq!(url, "https://x.example/dev-1");
    assert_eq!(*retries, Some(2));
    assert_eq!(
        body,
        &json!({"rule": "r", "bindings": {"p": "dev-1"}, "time": "2023-11-14T22:13:20Z", "path": "dev-1/s/r", "value": 4.5})
    );
    let as_json = serde_json::to_value(&fired[0]).unwrap();
    assert_eq!(as_json["branch"], "then");
    assert_eq!(as_json["cause"]["type"], "update");
    assert_eq!(as_json["actions"][0]["type"], "notify");
}

#[test]
fn and_keeps_the_for_timer_running_when_the_left_side_is_false() {
    // `b/s/x > 0 for 1m` must start counting even while `a/s/x` is false.
    let mut e = engine(r#"rule r when a/s/x > 0 and b/s/x > 0 for 1m then publish "x" end"#);
    feed(&mut e, "a/s/x", json!(0), 0);
    feed(&mut e, "b/s/x", json!(1), 0);
    assert!(tick(&mut e, 2 * M).is_empty());
    assert_eq!(topics(&feed(&mut e, "a/s/x", json!(1), 3 * M)), ["x"]);
}

#[test]
fn unknown_values_are_not_true() {
    let mut e = engine(
        r#"rule r when not (a/s/x > 1) then publish "not" end
rule q when a/s/x / b/s/y > 1 or b/s/y == 0 then publish "div" end"#,
    );
    // `a/s/x` unknown: `not unknown` is unknown, not true.
    assert!(feed(&mut e, "b/s/y", json!(0), S).iter().all(|f| f.rule.as_str() == "q"));
    assert_eq!(topics(&feed(&mut e, "a/s/x", json!(0), 2 * S)), ["not"]);
}

#[test]
fn scheduled_rules_bind_variables_through_discovered_resources() {
    let mut e = engine(r#"rule hourly every 1h then act $l:lamp-*/light/blink(times = 1) end"#);
    e.discover(&path("lamp-1/light/blink"));
    e.discover(&path("lamp-2/light/blink"));
    e.discover(&path("pump-1/light/blink"));
    tick(&mut e, 0);
    let fired = tick(&mut e, H);
    let targets: Vec<String> = fired
        .iter()
        .flat_map(|f| &f.actions)
        .map(|a| match a {
            Action::Act { path, .. } => path.to_string(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(targets, ["lamp-1/light/blink", "lamp-2/light/blink"]);
}

#[test]
fn the_engine_can_move_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Engine>();
    assert_send_sync::<Firing>();
}
