//! What the engine hands back when a rule fires: the actions to perform, rendered, and why.

use std::collections::BTreeMap;

use hub_model::{Name, ResourcePath, Timestamp};
use serde::Serialize;
use serde_json::{Map, Value};

/// One action to perform, with every template and expression already evaluated. The hub performs it
/// (through the policy layer, the twin, the event bus, the webhook client or the app runtime).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Action {
    /// ACT on an action resource.
    Act {
        /// The action resource.
        path: ResourcePath,
        /// Its parameters.
        params: Map<String, Value>,
    },
    /// SET a state or property.
    Set {
        /// The resource.
        path: ResourcePath,
        /// The new value.
        value: Value,
    },
    /// Publish an event on the hub's event bus.
    Publish {
        /// The event's topic.
        topic: String,
        /// The event's payload.
        payload: Value,
    },
    /// POST `body` as JSON to a webhook, retrying failed deliveries.
    Notify {
        /// Where to POST.
        url: String,
        /// The JSON body.
        body: Value,
        /// How many times to retry; `None` leaves it to the hub's default.
        retries: Option<u32>,
    },
    /// Call a WASM rule app (kind `app`).
    Call {
        /// The app's id.
        app: Name,
        /// Its parameters.
        params: Map<String, Value>,
    },
}

/// Which branch of a rule ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Branch {
    /// The `then` actions.
    Then,
    /// The `else` actions.
    Else,
}

/// What made the rule run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Cause {
    /// An update of a resource the rule reads.
    Update {
        /// The resource updated.
        path: ResourcePath,
        /// Its new value.
        value: Value,
    },
    /// Time passing: a `for` duration elapsed, or samples left a time window.
    Timer,
    /// A schedule (`every`, `at`) came due.
    Schedule,
    /// A provider went online or offline.
    Status {
        /// The provider.
        provider: Name,
        /// Whether it is now online.
        online: bool,
    },
}

/// One value the rule looked at, as it was when it fired.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    /// What was read: a resource path, `prev(path)` or an aggregate such as `avg(noise-12/sound/level, 10m)`,
    /// with variables replaced by what they are bound to.
    pub what: String,
    /// Its value (`null` when unknown).
    pub value: Value,
}

/// A rule firing: the actions to perform and the explanation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Firing {
    /// The rule's name.
    pub rule: Name,
    /// What the instance's variables are bound to (empty for rules without variables).
    pub bindings: BTreeMap<String, Name>,
    /// When it fired (engine time).
    pub at: Timestamp,
    /// Which branch ran.
    pub branch: Branch,
    /// What made it run.
    pub cause: Cause,
    /// The values of what the condition (or the trigger and guard) read, at the time of firing.
    pub evidence: Vec<Evidence>,
    /// The actions to perform, in the order written.
    pub actions: Vec<Action>,
    /// Actions that were left out, and why (a SET whose value is unknown, a path that cannot be built).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

/// Counters of one deployed rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RuleStats {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Live instances (one per binding of its variables; one for a rule without variables).
    pub instances: usize,
    /// Evaluations of its condition, guard or schedule.
    pub evaluations: u64,
    /// Times a branch ran.
    pub firings: u64,
    /// `then` firings suppressed by the cooldown.
    pub suppressed: u64,
    /// Instances not created because the rule reached its limit.
    pub instances_refused: u64,
    /// When it last fired.
    pub last_fired: Option<Timestamp>,
}

/// Counters of the whole engine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    /// Deployed rules.
    pub rules: usize,
    /// Live rule instances.
    pub instances: usize,
    /// Resources the engine tracks.
    pub resources: usize,
    /// Updates processed.
    pub updates: u64,
    /// Updates ignored because they were older than the resource's current value.
    pub stale_updates: u64,
    /// Firings emitted.
    pub firings: u64,
    /// Timers waiting (`for` deadlines, window expiries, schedules), including some already obsolete.
    pub timers: usize,
}
