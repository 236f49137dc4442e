//! The rule examples of `docs/rules.md` must stay valid: every fenced block that holds rules parses and
//! passes the structure check.

use std::{fs, path::Path};

use hub_rules::{check_structure, parse};

#[test]
fn the_reference_examples_are_valid_rules() {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/rules.md");
    let text = fs::read_to_string(&doc).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_start().starts_with("```")) {
            (None, true) => current = Some(String::new()),
            (Some(block), true) => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), false) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, false) => {}
        }
    }
    // Rule blocks start with `rule` and close with `end`; the grammar sketches use `<placeholders>`.
    let rule_blocks: Vec<&String> = blocks
        .iter()
        .filter(|b| {
            b.trim_start().starts_with("rule ") && b.lines().any(|l| l.trim() == "end") && !b.contains("<name>")
        })
        .collect();
    assert!(rule_blocks.len() >= 5, "found {} rule blocks", rule_blocks.len());
    for block in rule_blocks {
        let rules = parse(block).unwrap_or_else(|e| panic!("{e:?}\n{block}"));
        for rule in &rules {
            let errors: Vec<_> = check_structure(rule).into_iter().filter(|d| d.is_error()).collect();
            assert!(errors.is_empty(), "{errors:?}\n{block}");
        }
    }
}
