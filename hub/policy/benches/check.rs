//! Cached versus cold authorisation checks against a policy of about 1,000 lines, for unclassified objects
//! (permissions alone) and for classified ones (data classes from `o` lines and from metadata, subject
//! attributes from `s` lines and from the token).
//!
//! Run with `cargo bench -p hub-policy --bench check`. Prints checks per second; asserts nothing about speed.

use std::{error::Error, fmt::Write as _, hint::black_box, time::Instant};

use std::sync::Arc;

use hub_policy::{
    Action, Attributes, DEFAULT_CACHE_CAPACITY, LabelSource, Labels, PolicyEngine, Principal, TokenInfo, TokenRegistry,
};

const SITES: usize = 900;

fn policy() -> String {
    let mut text = String::from("# benchmark policy\np, admin, *, *\np, anonymous, system:health, read\n");
    for i in 0..SITES {
        let _ = writeln!(text, "p, user-{i}, site-{i}-*, read");
    }
    for r in 0..50 {
        let _ = writeln!(text, "p, role-{r}, */*/metric-{r}, read");
    }
    for g in 0..50 {
        let _ = writeln!(text, "g, member-{g}, role-{g}");
    }
    // Attributes: five departments, clearance by role; a class for every tenth site family.
    for r in 0..50 {
        let _ = writeln!(text, "s, role-{r}, department, dep-{}", r % 5);
        let _ = writeln!(text, "s, role-{r}, clearance, {}", r % 4);
    }
    for c in 0..90 {
        let class = ["open", "closed", "confidential"][c % 3];
        let _ = writeln!(text, "o, site-{}-*, class, {class}", c * 10);
        let _ = writeln!(text, "o, site-{}-*, department, dep-{}", c * 10, c % 5);
    }
    text
}

/// Metadata labels, as the live model would give them: personal data owned by `user-{site}` on `*-9` devices.
struct DeviceLabels;

impl LabelSource for DeviceLabels {
    fn labels(&self, object: &str) -> Labels {
        let device = object.split('/').next().unwrap_or("");
        if let Some(rest) = device.strip_prefix("site-")
            && device.ends_with("-9")
        {
            let site = rest.split('-').next().unwrap_or("");
            return Labels::from_metadata(Some("personal"), None, None, Some(&format!("user-{site}")));
        }
        Labels::default()
    }
}

fn per_second(count: usize, started: Instant) -> f64 {
    count as f64 / started.elapsed().as_secs_f64()
}

fn main() -> Result<(), Box<dyn Error>> {
    let text = policy();
    let lines = text.lines().count();

    let started = Instant::now();
    let builds = 20;
    for _ in 0..builds {
        black_box(PolicyEngine::new(&text)?);
    }
    let build_ms = started.elapsed().as_secs_f64() * 1e3 / builds as f64;
    let engine = PolicyEngine::new(&text)?;

    // A working set of 1,000 requests: subjects allowed by line ~k, role-carrying tokens, anonymous, denials.
    let mut requests: Vec<(Principal, String, Action)> = Vec::new();
    for i in 0..1_000 {
        let site = (i * 7) % SITES;
        let request = match i % 4 {
            0 => (Principal::new(format!("user-{site}"), vec![]), format!("site-{site}-1/env/level"), Action::Read),
            1 => (
                Principal::new("grafana", vec!["viewer".into(), format!("role-{}", i % 50)]),
                format!("site-{site}-2/env/metric-{}", i % 50),
                Action::Read,
            ),
            2 => (Principal::anonymous(), "system:health".to_owned(), Action::Read),
            _ => (Principal::new(format!("user-{site}"), vec![]), format!("site-{site}-1/env/level"), Action::Write),
        };
        requests.push(request);
    }
    // Warm the cache.
    let mut allowed = 0usize;
    for (principal, object, action) in &requests {
        allowed += usize::from(engine.check(principal, object, *action));
    }

    let rounds = 5_000;
    let started = Instant::now();
    for _ in 0..rounds {
        for (principal, object, action) in &requests {
            black_box(engine.check(black_box(principal), black_box(object), *action));
        }
    }
    let cached = per_second(rounds * requests.len(), started);

    // Subject-only allowed requests: the common case for a dashboard token.
    let simple: Vec<&(Principal, String, Action)> = requests.iter().step_by(4).collect();
    let started = Instant::now();
    for _ in 0..rounds * 4 {
        for (principal, object, action) in &simple {
            black_box(engine.check(black_box(principal), black_box(object), *action));
        }
    }
    let cached_simple = per_second(rounds * 4 * simple.len(), started);

    // Cold: every object is new, so every check runs casbin over the whole policy (and fills the cache).
    let cold_count = 2_000;
    let cold_objects: Vec<String> =
        (0..cold_count).map(|i| format!("site-{}-{}/env/level", (i * 7) % SITES, 1_000 + i)).collect();
    let started = Instant::now();
    for (i, object) in cold_objects.iter().enumerate() {
        let principal = Principal::new(format!("user-{}", (i * 7) % SITES), vec![]);
        black_box(engine.check(&principal, object, Action::Read));
    }
    let cold = per_second(cold_count, started);

    // Token authentication: hash + lookup among 1,000 tokens.
    let registry = TokenRegistry::new();
    let mut secrets = Vec::new();
    for i in 0..1_000 {
        let (secret, hash) = TokenRegistry::generate()?;
        registry.insert(TokenInfo {
            hash,
            subject: format!("user-{i}"),
            roles: vec!["viewer".into()],
            description: None,
            created_micros: 0,
            expires_micros: None,
        })?;
        secrets.push(secret);
    }
    let auth_rounds = 200;
    let started = Instant::now();
    for _ in 0..auth_rounds {
        for secret in &secrets {
            black_box(registry.authenticate(black_box(secret), 1).is_ok());
        }
    }
    let auth = per_second(auth_rounds * secrets.len(), started);

    // Classified reads: the same engine with the metadata source, staff principals with token attributes.
    let classified = PolicyEngine::with_domain(&text, "santander", DEFAULT_CACHE_CAPACITY)?;
    classified.set_label_source(Arc::new(DeviceLabels));
    let staff = |i: usize| {
        Principal::new(format!("user-{}", (i * 7) % SITES), vec![format!("role-{}", i % 50)])
            .with_attributes(Attributes { departments: vec![format!("dep-{}", i % 5)], clearance: Some((i % 4) as u8) })
    };
    let classified_requests: Vec<(Principal, String)> = (0..1_000)
        .map(|i| {
            let site = (i * 10) % SITES;
            let device = if i % 4 == 0 { 9 } else { i % 9 };
            (staff(i), format!("site-{site}-{device}/env/level"))
        })
        .collect();
    let mut classified_allowed = 0usize;
    for (principal, object) in &classified_requests {
        classified_allowed += usize::from(classified.check(principal, object, Action::Read));
    }
    let started = Instant::now();
    for _ in 0..rounds / 5 {
        for (principal, object) in &classified_requests {
            black_box(classified.check(black_box(principal), black_box(object), Action::Read));
        }
    }
    let classified_warm = per_second(rounds / 5 * classified_requests.len(), started);
    let started = Instant::now();
    for i in 0..cold_count {
        let object = format!("site-{}-{}/env/level", (i * 10) % SITES, 2_000 + i);
        black_box(classified.check(&staff(i), &object, Action::Read));
    }
    let classified_cold = per_second(cold_count, started);

    println!("policy: {lines} lines; {allowed} of {} working-set requests allowed", requests.len());
    println!("build (parse + casbin load):   {build_ms:>12.2} ms per policy");
    println!("cached check, mixed working set: {cached:>12.0} checks/s ({:.0} ns/check)", 1e9 / cached);
    println!("cached check, subject only:      {cached_simple:>12.0} checks/s ({:.0} ns/check)", 1e9 / cached_simple);
    println!("cold check (casbin enforce):     {cold:>12.0} checks/s ({:.1} µs/check)", 1e6 / cold);
    println!(
        "classified read, warm:           {classified_warm:>12.0} checks/s ({:.0} ns/check; {classified_allowed} of 1000 allowed)",
        1e9 / classified_warm
    );
    println!(
        "classified read, cold:           {classified_cold:>12.0} checks/s ({:.1} µs/check)",
        1e6 / classified_cold
    );
    println!("token authenticate:              {auth:>12.0} auths/s");
    Ok(())
}
