//! The rule engine under load, in process: 1,000 deployed rules (thresholds, `for`, windowed averages and
//! maxima, wildcard-bound rules with one instance per provider) and 1,000,000 updates over 10,000 resources.
//!
//! Reports updates evaluated per second, and the latency from handing an update to the engine to receiving
//! the firing it causes (p50, p99, max). Run with `cargo bench -p hub-rules --bench engine`.

use std::time::{Duration, Instant};

use hub_model::{ResourcePath, Timestamp, Update};
use hub_rules::{Engine, Firing, parse};
use serde_json::json;

const PROVIDERS: usize = 1_000;
const RESOURCES_PER_PROVIDER: usize = 10;
const ZONES: usize = 20;
const UPDATES: usize = 1_000_000;
/// Simulated time between two updates: 1,000,000 updates span 100 s, each resource reports about once a second.
const STEP_US: i64 = 100;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn provider(i: usize) -> String {
    format!("z{:02}-d{i:04}", i % ZONES)
}

fn resource(rng: &mut Rng) -> String {
    format!("{}/env/r{}", provider(rng.below(PROVIDERS)), rng.below(RESOURCES_PER_PROVIDER))
}

/// 400 thresholds, 200 `for`, 200 windows, 200 wildcard-bound rules.
fn rules(rng: &mut Rng) -> String {
    let mut src = String::new();
    for n in 0..400 {
        let p = resource(rng);
        src.push_str(&format!("rule threshold_{n} when {p} > 90 then publish \"alert/{n}\" with {{v = value}} end\n"));
    }
    for n in 0..200 {
        let p = resource(rng);
        let target = format!("{}/ctl/fan", provider(rng.below(PROVIDERS)));
        src.push_str(&format!(
            "rule held_{n} when {p} > 60 for 2s then set {target} = true else set {target} = false end\n"
        ));
    }
    for n in 0..100 {
        let p = resource(rng);
        src.push_str(&format!("rule average_{n} when avg({p}, 1m) > 55 then publish \"avg/{n}\" end\n"));
    }
    for n in 0..100 {
        let p = resource(rng);
        src.push_str(&format!("rule peak_{n} when max({p}, 20 samples) > 99 then publish \"peak/{n}\" end\n"));
    }
    for zone in 0..ZONES {
        for r in 0..RESOURCES_PER_PROVIDER {
            src.push_str(&format!(
                "rule zone_{zone}_{r} when $p:z{zone:02}-*/env/r{r} > 95 then notify \"https://ops.example/{{$p}}\" with {{value = value}} end\n"
            ));
        }
    }
    src
}

fn engine(source: &str) -> Engine {
    let mut engine = Engine::new();
    for rule in parse(source).expect("the benchmark rules parse") {
        engine.deploy(rule).expect("the benchmark rules deploy");
    }
    engine
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// VmRSS from /proc (Linux only).
fn resident_memory() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).map(|v| v.trim().to_string())
}

fn main() {
    let mut rng = Rng(42);
    let source = rules(&mut rng);
    let paths: Vec<ResourcePath> = (0..PROVIDERS)
        .flat_map(|p| (0..RESOURCES_PER_PROVIDER).map(move |r| format!("{}/env/r{r}", provider(p))))
        .map(|p| p.parse().expect("valid path"))
        .collect();
    let start = 1_700_000_000_000_000i64;
    let updates: Vec<Update> = (0..UPDATES)
        .map(|i| Update {
            path: paths[rng.below(paths.len())].clone(),
            value: json!(rng.below(1001) as f64 / 10.0),
            timestamp: Timestamp::from_micros(start + i as i64 * STEP_US),
        })
        .collect();

    // Throughput: every update evaluated, firings counted.
    let deploy_started = Instant::now();
    let mut e = engine(&source);
    let deploy_time = deploy_started.elapsed();
    let mut firings = 0u64;
    let mut actions = 0u64;
    let started = Instant::now();
    for u in &updates {
        e.on_update(u, &mut |f: Firing| {
            firings += 1;
            actions += f.actions.len() as u64;
        });
    }
    let elapsed = started.elapsed();
    let stats = e.engine_stats();
    let evaluations: u64 =
        e.rules().map(|r| r.name.clone()).filter_map(|n| e.stats(n.as_str())).map(|s| s.evaluations).sum();

    // Latency: a fresh engine, the same stream, the time from handing an update in to receiving its firing.
    let mut e = engine(&source);
    let mut to_firing: Vec<Duration> = Vec::with_capacity(firings as usize);
    let mut per_update: Vec<Duration> = Vec::with_capacity(UPDATES);
    for u in &updates {
        let t0 = Instant::now();
        let mut first: Option<Duration> = None;
        e.on_update(u, &mut |_f: Firing| {
            if first.is_none() {
                first = Some(t0.elapsed());
            }
        });
        per_update.push(t0.elapsed());
        to_firing.extend(first);
    }
    to_firing.sort();
    per_update.sort();

    let rate = UPDATES as f64 / elapsed.as_secs_f64();
    println!("hub-rules engine benchmark");
    println!("  rules deployed        1,000 (400 threshold, 200 `for`, 100 avg window, 100 max window, 200 wildcard)");
    println!("  deploy time           {deploy_time:.2?}");
    println!("  resources             {} ({} seen by the engine)", paths.len(), stats.resources);
    println!("  rule instances        {}", stats.instances);
    println!("  updates               {UPDATES}");
    println!("  elapsed               {elapsed:.2?}");
    println!("  throughput            {rate:.0} updates/s");
    println!("  rule evaluations      {evaluations} ({:.2} per update)", evaluations as f64 / UPDATES as f64);
    println!("  firings               {firings} ({actions} actions)");
    println!("  timers pending        {} at the end", stats.timers);
    if let Some(rss) = resident_memory() {
        println!("  resident memory       {rss} (whole process, 1,000,000 prepared updates included)");
    }
    println!(
        "  update -> firing      p50 {:.2?}  p99 {:.2?}  max {:.2?}  ({} firings timed)",
        percentile(&to_firing, 0.50),
        percentile(&to_firing, 0.99),
        to_firing.last().copied().unwrap_or_default(),
        to_firing.len()
    );
    println!(
        "  per update (all)      p50 {:.2?}  p99 {:.2?}  max {:.2?}",
        percentile(&per_update, 0.50),
        percentile(&per_update, 0.99),
        per_update.last().copied().unwrap_or_default()
    );
}
