//! Hostile input: thousands of random and mutated sources go through the parser, the checker, the printer
//! and the engine. Nothing may panic; whatever parses must print back to text that parses to the same rule.
//! The generator is a fixed-seed PRNG, so a failure reproduces.

mod common;

use std::{fs, path::Path};

use hub_model::{Name, ResourcePath, Timestamp, Update};
use hub_rules::{Engine, ModelView, Rule, Segment, check, check_structure, parse};
use serde_json::json;

/// SplitMix64: small, fast, good enough to drive a fuzzer.
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
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const FRAGMENTS: &[&str] = &[
    "rule ",
    "r1 ",
    "when ",
    "on ",
    "update ",
    "change ",
    "offline ",
    "online ",
    "every ",
    "at ",
    "if ",
    "then ",
    "else ",
    "end\n",
    "and ",
    "or ",
    "not ",
    "for ",
    "in ",
    "above ",
    "below ",
    "until ",
    "true",
    "false",
    "act ",
    "set ",
    "publish ",
    "notify ",
    "call ",
    "with ",
    "cooldown ",
    "retries ",
    "samples",
    "value",
    "provider",
    "time",
    "noise-12/sound/level",
    "$p/sound/level",
    "$p:noise-*/sign/on",
    "a/b/c",
    "site.a/env.v2/temp.c",
    "x/y",
    "a//b",
    "$",
    "$p",
    "$p:",
    "*",
    "?",
    "/",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    "=",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "+",
    "-",
    "%",
    "!",
    "&&",
    "'",
    ";",
    "\"",
    "\"text\"",
    "\"{value}\"",
    "\"{{\"",
    "\"}\"",
    "\"{\"",
    "\\",
    "\\\"",
    "#",
    "# comment\n",
    "\n",
    " ",
    "\t",
    "0",
    "70",
    "65.5",
    "1e400",
    "1e-3",
    "99999999999999999999",
    "5m",
    "1h30m",
    "500ms",
    "0s",
    "9999999999999999d",
    "02:00",
    "25:61",
    "1:2:3:4",
    "avg(",
    "max(",
    "count(",
    "rate(",
    "prev(",
    "abs(",
    "contains(",
    "averge(",
    "20 samples",
    "0 samples",
    "é",
    "日本",
    "\u{0}",
    "\r\n",
];

fn corpus() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut out: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rule"))
        .map(|p| fs::read_to_string(p).unwrap())
        .collect();
    out.sort();
    out
}

/// A char boundary at or before `i`.
fn boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn mutate(rng: &mut Rng, base: &str) -> String {
    let mut s = base.to_string();
    for _ in 0..1 + rng.below(4) {
        let at = boundary(&s, rng.below(s.len() + 1));
        match rng.below(5) {
            0 => {
                let end = boundary(&s, at + rng.below(12));
                s.replace_range(at..end, "");
            }
            1 | 2 => s.insert_str(at, rng.pick(FRAGMENTS)),
            3 => {
                let end = boundary(&s, at + rng.below(40));
                let copy = s[at..end].to_string();
                let to = boundary(&s, rng.below(s.len() + 1));
                s.insert_str(to, &copy);
            }
            _ => {
                let byte = (rng.next() % 128) as u8 as char;
                s.insert(at, byte);
            }
        }
    }
    s
}

fn soup(rng: &mut Rng) -> String {
    let mut s = String::from("rule soup ");
    for _ in 0..rng.below(40) {
        s.push_str(rng.pick(FRAGMENTS));
        if rng.below(3) == 0 {
            s.push(' ');
        }
    }
    s
}

fn random_text(rng: &mut Rng) -> String {
    (0..rng.below(200))
        .map(|_| match rng.below(4) {
            0 => char::from_u32((rng.next() % 0x2FFF) as u32).unwrap_or('x'),
            _ => (32 + rng.next() % 95) as u8 as char,
        })
        .collect()
}

const PATHS: &[&str] = &["a/b/c", "noise-12/sound/level", "$p/s/x", "$p:dev-*/s/y", "site.a/env.v2/temp.c", "$p/$q/z"];

/// A random valid-looking rule from a small grammar, to exercise the printer and the engine.
fn generated(rng: &mut Rng, n: usize) -> String {
    let trigger = match rng.below(5) {
        0 | 1 => format!("when {}", condition(rng, 3)),
        2 => format!("on {} {}", rng.pick(&["update", "change"]), rng.pick(PATHS)),
        3 => format!("on {} $p", rng.pick(&["offline", "online"])),
        _ => format!("every {}m{}", 1 + rng.below(90), if rng.below(2) == 0 { " at 02:30" } else { "" }),
    };
    let guard = if !trigger.starts_with("when") && rng.below(2) == 0 {
        format!(" if {}", condition(rng, 2))
    } else {
        String::new()
    };
    let mut actions = String::new();
    for _ in 0..1 + rng.below(3) {
        actions.push_str(&action(rng));
        actions.push('\n');
    }
    let otherwise = if rng.below(3) == 0 { format!(" else {}", action(rng)) } else { String::new() };
    let cooldown = if rng.below(5) == 0 { " cooldown 1m" } else { "" };
    format!("rule g{n} {trigger}{guard}{cooldown} then {actions}{otherwise} end\n")
}

fn condition(rng: &mut Rng, depth: usize) -> String {
    let choice = if depth == 0 { rng.below(2) } else { rng.below(8) };
    match choice {
        0 => format!("{} {} {}", number(rng, depth), rng.pick(&["<", "<=", ">", ">=", "==", "!="]), number(rng, depth)),
        1 => format!("{} in [1, 2.5, \"x\"]", number(rng, depth)),
        2 => format!("{} {} {}", condition(rng, depth - 1), rng.pick(&["and", "or"]), condition(rng, depth - 1)),
        3 => format!("not {}", condition(rng, depth - 1)),
        4 => format!("{} > {} for {}s", rng.pick(PATHS), rng.below(100), 1 + rng.below(600)),
        5 => format!("{} above 70 until below 65", rng.pick(PATHS)),
        6 => format!("({})", condition(rng, depth - 1)),
        _ => format!("contains(\"abc\", \"b\") and {}", condition(rng, depth - 1)),
    }
}

fn number(rng: &mut Rng, depth: usize) -> String {
    let choice = if depth == 0 { rng.below(3) } else { rng.below(9) };
    match choice {
        0 => format!("{}", rng.below(100)),
        1 => rng.pick(PATHS).to_string(),
        2 => format!("{}.5", rng.below(10)),
        3 => format!(
            "{}({}, {})",
            rng.pick(&["avg", "min", "max", "sum", "count", "rate", "delta", "stddev"]),
            rng.pick(PATHS),
            rng.pick(&["10s", "5m", "3 samples", "1h"])
        ),
        4 => format!("{} {} {}", number(rng, depth - 1), rng.pick(&["+", "-", "*", "/", "%"]), number(rng, depth - 1)),
        5 => format!("-{}", number(rng, depth - 1)),
        6 => format!("prev({})", rng.pick(PATHS)),
        7 => format!("abs({})", number(rng, depth - 1)),
        _ => "value".into(),
    }
}

fn action(rng: &mut Rng) -> String {
    match rng.below(5) {
        0 => format!("set {} = {}", rng.pick(PATHS), number(rng, 2)),
        1 => format!("act {}(x = {}, y = \"{{$p}}\", in = 2)", rng.pick(PATHS), number(rng, 1)),
        2 => format!(
            "publish \"t/{{value}}/{{{}}}\" with {{k = {}, l = [1, {}]}}",
            number(rng, 1),
            number(rng, 1),
            number(rng, 0)
        ),
        3 => "notify \"https://x.example/{provider}\" retries 2".into(),
        _ => "call app.x(a = 1, b = time)".into(),
    }
}

/// A concrete path for each path the rule reads, with variables replaced by a made-up name.
fn sample_paths(rule: &Rule) -> Vec<ResourcePath> {
    let mut paths: Vec<&hub_rules::PathPattern> = rule.trigger_paths();
    for (_, e) in rule.exprs() {
        paths.extend(e.paths());
    }
    paths
        .into_iter()
        .map(|p| {
            let [a, b, c] = &p.segments;
            let name = |s: &Segment| match s {
                Segment::Name(n) => n.clone(),
                Segment::Var { glob: Some(g), .. } => {
                    Name::new(&g.as_str().replace(['*', '?'], "x")).unwrap_or_else(|_| Name::new("x").unwrap())
                }
                Segment::Var { .. } => Name::new("dev-1").unwrap(),
            };
            ResourcePath::new(name(a), name(b), name(c))
        })
        .collect()
}

fn exercise(rng: &mut Rng, source: &str, model: &dyn ModelView) -> bool {
    let Ok(rules) = parse(source) else { return false };
    let _ = check(&rules, model, &rules);
    let mut engine = Engine::new();
    for rule in &rules {
        let printed = rule.to_string();
        let reparsed = parse(&printed).unwrap_or_else(|e| panic!("printed rule does not parse: {e:?}\n{printed}"));
        assert_eq!(reparsed.len(), 1, "{printed}");
        assert_eq!(reparsed[0].to_string(), printed, "printing is not stable");
        if check_structure(rule).iter().all(|d| !d.is_error()) {
            let _ = engine.deploy(rule.clone());
        }
    }
    let paths: Vec<ResourcePath> = rules.iter().flat_map(sample_paths).collect();
    let values =
        [json!(1), json!(75.5), json!(-3), json!("loud"), json!(true), json!(null), json!([1, 2]), json!({"a": 1})];
    let mut t = 0i64;
    for _ in 0..30 {
        t += (rng.below(400) as i64) * 1_000_000;
        if let Some(p) = paths.get(rng.below(paths.len().max(1))) {
            let value = values[rng.below(values.len())].clone();
            engine.on_update(&Update { path: p.clone(), value, timestamp: Timestamp::from_micros(t) }, &mut |_| {});
        }
        if rng.below(4) == 0 {
            engine.tick(Timestamp::from_micros(t), &mut |_| {});
        }
    }
    true
}

#[test]
fn the_parser_checker_and_engine_never_panic() {
    let model = common::model();
    let corpus = corpus();
    let mut rng = Rng(0x5EED);
    let (mut parsed, mut total) = (0, 0);
    // FUZZ_ITERATIONS=1000000 for a longer run.
    let iterations = std::env::var("FUZZ_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    for i in 0..iterations {
        let source = match i % 6 {
            0 => soup(&mut rng),
            1 => random_text(&mut rng),
            2 | 3 => generated(&mut rng, i),
            _ => {
                let base = &corpus[rng.below(corpus.len())];
                mutate(&mut rng, base)
            }
        };
        total += 1;
        if exercise(&mut rng, &source, &model) {
            parsed += 1;
        }
    }
    // The mutations must leave a fair share of valid rules, or the engine half of the test means little.
    eprintln!("{parsed} of {total} inputs parsed");
    assert!(parsed > total / 4, "only {parsed} of {total} inputs parsed");
}

#[test]
fn the_corpus_itself_round_trips_and_runs() {
    let model = common::model();
    let mut rng = Rng(1);
    for source in corpus() {
        exercise(&mut rng, &source, &model);
    }
}

#[test]
fn huge_inputs_are_handled() {
    let big = "rule r when a/b/c > 1 then publish \"x\" end\n".repeat(2_000);
    let rules = parse(&big).unwrap();
    assert_eq!(rules.len(), 2_000);
    let duplicates =
        check(&rules, &common::model(), &[]).iter().filter(|d| d.code == hub_rules::DiagCode::DuplicateRule).count();
    assert_eq!(duplicates, 1_999);
    let long_name = format!("rule r when {}/b/c > 1 then publish \"x\" end", "a".repeat(10_000));
    assert!(parse(&long_name).unwrap_err()[0].message.contains("128"));
    let long_string = format!("rule r when a/b/c > 1 then publish \"{}\" end", "x".repeat(1_000_000));
    assert!(parse(&long_string).is_ok());
}

#[test]
fn the_deepest_accepted_rules_run_through_every_stage() {
    // Nested as deeply as the parser allows, in a default-sized test thread: checking, compiling,
    // evaluating, printing and dropping walk the tree recursively too.
    let depth = hub_rules::MAX_DEPTH - 4;
    let nested = format!("{}a/b/c > 1{}", "(".repeat(depth), ")".repeat(depth));
    let chain = vec!["a/b/c > 1"; depth].join(" and ");
    let sum = format!("a/b/c{} > 1", " + 1".repeat(depth));
    let model = common::model();
    for condition in [nested, chain, sum] {
        let source = format!("rule deep when {condition} then publish \"{{a/b/c}}\" end");
        let rules = parse(&source).unwrap_or_else(|e| panic!("{e:?}"));
        let _ = check(&rules, &model, &rules);
        let printed = rules[0].to_string();
        assert_eq!(parse(&printed).unwrap()[0].to_string(), printed);
        let mut engine = Engine::new();
        engine.deploy(rules[0].clone()).unwrap();
        let mut fired = 0;
        let update = Update { path: "a/b/c".parse().unwrap(), value: json!(5), timestamp: Timestamp::from_micros(1) };
        engine.on_update(&update, &mut |_| fired += 1);
        assert_eq!(fired, 1);
    }
}
