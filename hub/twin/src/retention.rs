use hub_model::{Glob, Timestamp};
use hub_store::{RetentionOutcome, Rollup, StoreError};

use crate::Twin;

/// One retention rule: resources matching the glob keep raw points for `keep_raw_micros`, then `rollup`.
#[derive(Debug, Clone)]
pub struct RetentionPolicy {
    /// Glob over `provider/service/resource`.
    pub resources: Glob,
    /// How long raw points are kept, in microseconds.
    pub keep_raw_micros: i64,
    /// What happens to older points.
    pub rollup: Rollup,
}

/// Applies retention rules once: each resource is governed by the first rule that matches it.
pub async fn apply_retention(
    twin: &Twin,
    rules: &[RetentionPolicy],
    now: Timestamp,
) -> Result<RetentionOutcome, StoreError> {
    let mut groups: Vec<Vec<hub_model::ResourcePath>> = vec![Vec::new(); rules.len()];
    for path in twin.resource_paths() {
        let text = path.to_string();
        if let Some(i) = rules.iter().position(|r| r.resources.matches(&text)) {
            groups[i].push(path);
        }
    }
    let mut total = RetentionOutcome::default();
    for (rule, paths) in rules.iter().zip(groups) {
        if paths.is_empty() {
            continue;
        }
        let cutoff = Timestamp::from_micros(now.as_micros().saturating_sub(rule.keep_raw_micros));
        for chunk in paths.chunks(500) {
            let outcome = twin.store().retain(chunk, cutoff, rule.rollup).await?;
            total.removed += outcome.removed;
            total.written += outcome.written;
        }
    }
    Ok(total)
}
