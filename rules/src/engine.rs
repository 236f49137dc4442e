//! The engine: a pure state machine that runs deployed rules.
//!
//! The caller drives it: updates in ([`Engine::on_update`]), time in ([`Engine::tick`]), firings out through
//! a callback. It does no I/O, spawns nothing and never blocks.
//!
//! **Indexing.** The engine keeps one slot per resource it has seen. Each slot lists the rule instances that
//! read it, so an update touches only them: one hash lookup, then work proportional to its readers. A
//! rule with `$variables` is an instance factory: the first time a resource path matching one of its
//! binding patterns shows up (an update, [`Engine::seed`] or [`Engine::discover`]), the engine creates an
//! instance for the names it binds.
//!
//! **Time.** The engine's clock is the latest time it was given (update timestamps and `tick` times); it
//! never goes back. `for` deadlines, samples leaving time windows and schedules are timers; every entry
//! point first runs the timers that are due, in time order, each at its own time.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, HashMap},
    mem,
    sync::Arc,
};

use hub_model::{ADMIN_SERVICE, Name, ResourcePath, Timestamp, Update};
use serde_json::{Map, Value};

use crate::{
    ast::{Micros, Rule, Segment, Window, fmt_duration},
    check::check_structure,
    compile::{CAction, CExpr, Compiled, EvidenceSpec, Kind, StateSpec, compile},
    diag::Severity,
    error::RuleError,
    eval::{NodeState, Reader, Scope, Slot, eval},
    firing::{Action, Branch, Cause, EngineStats, Evidence, Firing, RuleStats},
    hash::PathHashBuilder,
    small::SmallVec,
    value::Val,
    window::SlidingWindow,
};

/// Bounds that keep one rule from taking the hub's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Rules deployed at once.
    pub max_rules: usize,
    /// Instances per rule (bindings of its variables). Further matches are counted and ignored.
    pub max_instances_per_rule: usize,
    /// Samples one window keeps; beyond it the oldest are dropped (the window gets shorter).
    pub max_window_samples: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_rules: 100_000, max_instances_per_rule: 100_000, max_window_samples: 100_000 }
    }
}

struct Entry {
    rule: Rule,
    c: Compiled,
    enabled: bool,
    stats: RuleStats,
    instances: HashMap<Vec<Name>, u32>,
}

struct Instance {
    rule: u32,
    /// Unique per instance ever created, so timers of a removed instance never fire for its successor.
    generation: u64,
    bindings: Vec<Name>,
    /// The slot of each of the rule's reads.
    reads: SmallVec<u32, 4>,
    state: Vec<NodeState>,
    /// The condition's last value (`when` rules).
    last: Option<bool>,
    trigger_slot: Option<u32>,
    wake_at: Option<Micros>,
    next_run: Option<Micros>,
    last_fired: Option<Micros>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at: Micros,
    inst: u32,
    generation: u64,
    schedule: bool,
}

/// What made an evaluation happen, borrowed until a firing needs it.
#[derive(Clone, Copy)]
enum CauseRef<'a> {
    Update(&'a Update),
    Timer,
    Schedule,
    Status(&'a Name, bool),
}

impl CauseRef<'_> {
    fn to_cause(self) -> Cause {
        match self {
            CauseRef::Update(u) => Cause::Update { path: u.path.clone(), value: u.value.clone() },
            CauseRef::Timer => Cause::Timer,
            CauseRef::Schedule => Cause::Schedule,
            CauseRef::Status(provider, online) => Cause::Status { provider: provider.clone(), online },
        }
    }
}

/// Runs deployed rules over the updates and the time it is given. See the module documentation.
pub struct Engine {
    limits: Limits,
    clock: Option<Micros>,
    rules: Vec<Option<Entry>>,
    free_rules: Vec<u32>,
    by_name: HashMap<Name, u32>,
    instances: Vec<Option<Instance>>,
    free_instances: Vec<u32>,
    next_generation: u64,
    slots: Vec<Slot>,
    paths: HashMap<ResourcePath, u32, PathHashBuilder>,
    /// Rules with variables bound by resource paths.
    binder_rules: Vec<u32>,
    /// Rules triggered by provider status.
    status_rules: Vec<u32>,
    statuses: HashMap<Name, bool>,
    timers: BinaryHeap<Reverse<Timer>>,
    /// Schedule instances created before the engine knew the time.
    unscheduled: Vec<u32>,
    updates: u64,
    stale_updates: u64,
    firings: u64,
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new()
    }
}

/// The next time after `t` on the grid `anchor + k * every`.
fn next_after(t: Micros, every: Micros, anchor: Micros) -> Micros {
    let every = every.max(1);
    let k = t.saturating_sub(anchor).div_euclid(every).saturating_add(1);
    anchor.saturating_add(k.saturating_mul(every))
}

fn lookup(vars: &[String], bindings: &[Name], var: &str) -> Option<Name> {
    vars.iter().position(|v| v == var).and_then(|i| bindings.get(i)).cloned()
}

fn new_state(spec: &StateSpec, limits: &Limits) -> NodeState {
    match spec {
        StateSpec::Hold => NodeState::Hold { since: None },
        StateSpec::Hyst => NodeState::Hyst { latched: false },
        StateSpec::Window { window, func } => {
            NodeState::Window(Box::new(SlidingWindow::new(*window, *func, limits.max_window_samples)))
        }
    }
}

/// Everything an evaluation needs besides the rule and the instance.
struct Run<'a, F> {
    slots: &'a [Slot],
    timers: &'a mut BinaryHeap<Reverse<Timer>>,
    firings: &'a mut u64,
    sink: &'a mut F,
}

impl<F: FnMut(Firing)> Run<'_, F> {
    /// Evaluates a `when` instance at `t` and fires on an edge of its condition.
    fn evaluate_when(&mut self, entry: &mut Entry, inst: &mut Instance, id: u32, t: Micros, cause: CauseRef<'_>) {
        let Kind::When(condition) = &entry.c.kind else { return };
        entry.stats.evaluations += 1;
        let Instance { reads, bindings, state, trigger_slot, .. } = inst;
        let mut scope = Scope {
            slots: self.slots,
            reads: reads.as_slice(),
            bindings,
            rule: &entry.rule.name,
            t,
            trigger_slot: *trigger_slot,
            wake: None,
        };
        let holds = eval(condition, &mut scope, state).is_true();
        let wake = scope.wake;
        if wake != inst.wake_at {
            inst.wake_at = wake;
            if let Some(at) = wake {
                self.timers.push(Reverse(Timer { at, inst: id, generation: inst.generation, schedule: false }));
            }
        }
        let was = inst.last == Some(true);
        inst.last = Some(holds);
        if holds && !was {
            self.fire(entry, inst, t, Branch::Then, cause);
        } else if !holds && was && !entry.c.otherwise.is_empty() {
            self.fire(entry, inst, t, Branch::Else, cause);
        }
    }

    /// Runs an event, status or schedule instance: its guard picks the branch.
    fn run_event(&mut self, entry: &mut Entry, inst: &mut Instance, t: Micros, cause: CauseRef<'_>) {
        entry.stats.evaluations += 1;
        let branch = match &entry.c.guard {
            None => Some(Branch::Then),
            Some(guard) => {
                let Instance { reads, bindings, state, trigger_slot, .. } = inst;
                let mut scope = Scope {
                    slots: self.slots,
                    reads: reads.as_slice(),
                    bindings,
                    rule: &entry.rule.name,
                    t,
                    trigger_slot: *trigger_slot,
                    wake: None,
                };
                if eval(guard, &mut scope, state).is_true() {
                    Some(Branch::Then)
                } else {
                    (!entry.c.otherwise.is_empty()).then_some(Branch::Else)
                }
            }
        };
        if let Some(branch) = branch {
            self.fire(entry, inst, t, branch, cause);
        }
    }

    fn fire(&mut self, entry: &mut Entry, inst: &mut Instance, t: Micros, branch: Branch, cause: CauseRef<'_>) {
        if branch == Branch::Then
            && let (Some(cooldown), Some(last)) = (entry.c.cooldown, inst.last_fired)
            && t.saturating_sub(last) < cooldown
        {
            entry.stats.suppressed += 1;
            return;
        }
        let c = &entry.c;
        let Instance { reads, bindings, state, trigger_slot, .. } = inst;
        let mut scope = Scope {
            slots: self.slots,
            reads: reads.as_slice(),
            bindings,
            rule: &entry.rule.name,
            t,
            trigger_slot: *trigger_slot,
            wake: None,
        };
        let list = match branch {
            Branch::Then => &c.then,
            Branch::Else => &c.otherwise,
        };
        let mut actions = Vec::with_capacity(list.len());
        let mut skipped = Vec::new();
        for a in list {
            match render_action(a, c, &mut scope, state) {
                Ok(action) => actions.push(action),
                Err(why) => skipped.push(why),
            }
        }
        let evidence = c.evidence.iter().map(|e| evidence(e, &mut scope, state)).collect();
        let bound: BTreeMap<String, Name> = c.vars.iter().cloned().zip(inst.bindings.iter().cloned()).collect();
        let at = Timestamp::from_micros(t);
        if branch == Branch::Then {
            inst.last_fired = Some(t);
        }
        entry.stats.firings += 1;
        entry.stats.last_fired = Some(at);
        *self.firings += 1;
        (self.sink)(Firing {
            rule: entry.rule.name.clone(),
            bindings: bound,
            at,
            branch,
            cause: cause.to_cause(),
            evidence,
            actions,
            skipped,
        });
    }
}

fn evidence(spec: &EvidenceSpec, scope: &mut Scope<'_>, state: &mut [NodeState]) -> Evidence {
    let path = |read: u16, scope: &Scope<'_>| scope.slot(read).map_or_else(String::new, |s| s.path.to_string());
    match spec {
        EvidenceSpec::Cur(r) => {
            Evidence { what: path(*r, scope), value: scope.slot(*r).map_or(Value::Null, |s| s.cur.to_json()) }
        }
        EvidenceSpec::Prev(r) => Evidence {
            what: format!("prev({})", path(*r, scope)),
            value: scope.slot(*r).map_or(Value::Null, |s| s.prev.to_json()),
        },
        EvidenceSpec::Window { state: i, func, window, read } => {
            let mut what = format!("{}({}, ", func.as_str(), path(*read, scope));
            match window {
                Window::Time(us) => {
                    let _ = fmt_duration(*us, &mut what);
                }
                Window::Count(n) => what.push_str(&format!("{n} samples")),
            }
            what.push(')');
            let value = eval(&CExpr::Window { state: *i, func: *func }, scope, state).to_json();
            Evidence { what, value }
        }
    }
}

fn render_params(
    params: &[(Arc<str>, CExpr)],
    scope: &mut Scope<'_>,
    state: &mut [NodeState],
) -> Result<Map<String, Value>, String> {
    let mut map = Map::new();
    for (name, e) in params {
        let v = eval(e, scope, state);
        if v.is_unknown() {
            return Err(format!("parameter `{name}` is unknown"));
        }
        map.insert(name.to_string(), v.to_json());
    }
    Ok(map)
}

fn text(e: &CExpr, scope: &mut Scope<'_>, state: &mut [NodeState]) -> String {
    match eval(e, scope, state) {
        Val::Str(s) => s.to_string(),
        other => {
            let mut out = String::new();
            other.render(&mut out);
            out
        }
    }
}

/// The body of a `publish` or `notify` without `with`.
fn envelope(c: &Compiled, scope: &Scope<'_>) -> Value {
    let mut map = Map::new();
    map.insert("rule".into(), Value::String(scope.rule.to_string()));
    let bindings: Map<String, Value> =
        c.vars.iter().zip(scope.bindings).map(|(v, n)| (v.clone(), Value::String(n.to_string()))).collect();
    map.insert("bindings".into(), Value::Object(bindings));
    map.insert("time".into(), Value::String(Timestamp::from_micros(scope.t).to_rfc3339()));
    if let Some(slot) = scope.trigger_slot.and_then(|s| scope.slots.get(s as usize)) {
        map.insert("path".into(), Value::String(slot.path.to_string()));
        map.insert("value".into(), slot.cur.to_json());
    }
    Value::Object(map)
}

fn render_action(a: &CAction, c: &Compiled, scope: &mut Scope<'_>, state: &mut [NodeState]) -> Result<Action, String> {
    let bindings = scope.bindings;
    let resolve = |p: &crate::ast::PathPattern| {
        p.substitute(|v| lookup(&c.vars, bindings, v)).ok_or_else(|| format!("cannot build the path `{p}`"))
    };
    Ok(match a {
        CAction::Act { path, params } => {
            let path = resolve(path)?;
            let params = render_params(params, scope, state).map_err(|e| format!("act {path}: {e}"))?;
            Action::Act { path, params }
        }
        CAction::Set { path, value } => {
            let path = resolve(path)?;
            let value = eval(value, scope, state);
            if value.is_unknown() {
                return Err(format!("set {path}: the value is unknown (no value yet, or an empty window)"));
            }
            Action::Set { path, value: value.to_json() }
        }
        CAction::Publish { topic, payload } => {
            let topic = text(topic, scope, state);
            let payload = match payload {
                Some(p) => eval(p, scope, state).to_json(),
                None => envelope(c, scope),
            };
            Action::Publish { topic, payload }
        }
        CAction::Notify { url, body, retries } => {
            let url = text(url, scope, state);
            let body = match body {
                Some(b) => eval(b, scope, state).to_json(),
                None => envelope(c, scope),
            };
            Action::Notify { url, body, retries: *retries }
        }
        CAction::Call { app, params } => {
            let params = render_params(params, scope, state).map_err(|e| format!("call {app}: {e}"))?;
            Action::Call { app: app.clone(), params }
        }
    })
}

fn status_of(v: &Value) -> Option<bool> {
    match v.as_str() {
        Some("online") => Some(true),
        Some("offline") => Some(false),
        _ => None,
    }
}

fn is_status_path(path: &ResourcePath) -> bool {
    path.service.as_str() == ADMIN_SERVICE && path.resource.as_str() == "status"
}

impl Engine {
    /// An empty engine with the default [`Limits`].
    pub fn new() -> Engine {
        Engine::with_limits(Limits::default())
    }

    /// An empty engine with the given limits.
    pub fn with_limits(limits: Limits) -> Engine {
        Engine {
            limits,
            clock: None,
            rules: Vec::new(),
            free_rules: Vec::new(),
            by_name: HashMap::new(),
            instances: Vec::new(),
            free_instances: Vec::new(),
            next_generation: 0,
            slots: Vec::new(),
            paths: HashMap::default(),
            binder_rules: Vec::new(),
            status_rules: Vec::new(),
            statuses: HashMap::new(),
            timers: BinaryHeap::new(),
            unscheduled: Vec::new(),
            updates: 0,
            stale_updates: 0,
            firings: 0,
        }
    }

    // ---- rules ----

    /// Deploys a rule. The rule must pass [`check_structure`] (the model checks are the caller's, with
    /// [`crate::check`]); a rule with the same name must be removed first.
    ///
    /// A rule without variables gets its instance at once. A rule with variables gets one instance per
    /// binding, for every matching resource the engine already knows and for those that appear later.
    pub fn deploy(&mut self, rule: Rule) -> Result<(), RuleError> {
        let errors: Vec<_> = check_structure(&rule).into_iter().filter(|d| d.severity == Severity::Error).collect();
        if !errors.is_empty() {
            return Err(RuleError::Invalid { rule: rule.name.to_string(), diagnostics: errors });
        }
        if self.by_name.contains_key(rule.name.as_str()) {
            return Err(RuleError::AlreadyDeployed(rule.name.to_string()));
        }
        if self.by_name.len() >= self.limits.max_rules {
            return Err(RuleError::LimitExceeded(format!("at most {} rules", self.limits.max_rules)));
        }
        let c = compile(&rule);
        let name = rule.name.clone();
        let stats = RuleStats { enabled: true, ..RuleStats::default() };
        let entry = Entry { rule, c, enabled: true, stats, instances: HashMap::new() };
        let idx = occupy(&mut self.rules, &mut self.free_rules, entry);
        self.by_name.insert(name, idx);
        let (has_vars, status, binders) = match self.entry(idx) {
            Some(e) => (!e.c.vars.is_empty(), matches!(e.c.kind, Kind::Status { .. }), !e.c.binders.is_empty()),
            None => return Ok(()),
        };
        if status {
            self.status_rules.push(idx);
        }
        if !has_vars {
            self.ensure_instance(idx, Vec::new());
        } else if binders {
            self.binder_rules.push(idx);
            let known: Vec<ResourcePath> = self.slots.iter().map(|s| s.path.clone()).collect();
            for path in &known {
                self.bind(idx, path);
            }
        }
        Ok(())
    }

    /// Removes a rule with all its instances and state, and gives it back.
    pub fn remove(&mut self, name: &str) -> Result<Rule, RuleError> {
        let idx = self.by_name.remove(name).ok_or_else(|| RuleError::NotFound(name.to_string()))?;
        let entry = self.rules.get_mut(idx as usize).and_then(Option::take);
        let Some(entry) = entry else { return Err(RuleError::NotFound(name.to_string())) };
        for &id in entry.instances.values() {
            self.drop_instance(id);
        }
        self.binder_rules.retain(|&r| r != idx);
        self.status_rules.retain(|&r| r != idx);
        self.free_rules.push(idx);
        Ok(entry.rule)
    }

    /// Lets a rule run again. Its instances start afresh: windows empty, `for` and hysteresis reset.
    pub fn enable(&mut self, name: &str) -> Result<(), RuleError> {
        self.set_enabled(name, true)
    }

    /// Stops a rule from running, keeping it deployed. Updates still create its instances.
    pub fn disable(&mut self, name: &str) -> Result<(), RuleError> {
        self.set_enabled(name, false)
    }

    fn set_enabled(&mut self, name: &str, enabled: bool) -> Result<(), RuleError> {
        let idx = *self.by_name.get(name).ok_or_else(|| RuleError::NotFound(name.to_string()))?;
        let Some(entry) = self.rules.get_mut(idx as usize).and_then(Option::as_mut) else {
            return Err(RuleError::NotFound(name.to_string()));
        };
        let was = mem::replace(&mut entry.enabled, enabled);
        entry.stats.enabled = enabled;
        if enabled && !was {
            let ids: Vec<u32> = entry.instances.values().copied().collect();
            let specs = entry.c.states.clone();
            for id in ids {
                if let Some(inst) = self.instances.get_mut(id as usize).and_then(Option::as_mut) {
                    inst.state = specs.iter().map(|s| new_state(s, &self.limits)).collect();
                    inst.last = None;
                    inst.wake_at = None;
                    inst.next_run = None;
                    inst.last_fired = None;
                }
                self.schedule(id);
            }
        }
        Ok(())
    }

    /// The deployed rule with this name.
    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.by_name.get(name).and_then(|&i| self.entry(i)).map(|e| &e.rule)
    }

    /// Every deployed rule, in no particular order.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().flatten().map(|e| &e.rule)
    }

    /// The counters of a rule.
    pub fn stats(&self, name: &str) -> Option<RuleStats> {
        let e = self.by_name.get(name).and_then(|&i| self.entry(i))?;
        Some(RuleStats { instances: e.instances.len(), ..e.stats.clone() })
    }

    /// The bindings of each instance of a rule (one empty map for a rule without variables).
    pub fn instances(&self, name: &str) -> Vec<BTreeMap<String, Name>> {
        let Some(e) = self.by_name.get(name).and_then(|&i| self.entry(i)) else { return Vec::new() };
        let mut out: Vec<BTreeMap<String, Name>> =
            e.instances.keys().map(|b| e.c.vars.iter().cloned().zip(b.iter().cloned()).collect()).collect();
        out.sort();
        out
    }

    /// The counters of the engine.
    pub fn engine_stats(&self) -> EngineStats {
        EngineStats {
            rules: self.by_name.len(),
            instances: self.instances.iter().flatten().count(),
            resources: self.slots.len(),
            updates: self.updates,
            stale_updates: self.stale_updates,
            firings: self.firings,
            timers: self.timers.len(),
        }
    }

    /// When the engine next needs [`Engine::tick`]: the earliest pending timer. It may be earlier than
    /// necessary (an obsolete timer), never later.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.timers.peek().map(|Reverse(t)| Timestamp::from_micros(t.at))
    }

    /// The engine's clock: the latest time it was given.
    pub fn now(&self) -> Option<Timestamp> {
        self.clock.map(Timestamp::from_micros)
    }

    // ---- inputs ----

    /// Processes one update at its own timestamp. Shorthand for [`Engine::on_update_at`] with
    /// `now = update.timestamp`.
    pub fn on_update(&mut self, update: &Update, sink: &mut impl FnMut(Firing)) {
        self.on_update_at(update, update.timestamp, sink);
    }

    /// Processes one update with the engine's clock moved to `now` (if later). Timers due by then run
    /// first; then the rules that read the resource are evaluated, and `sink` receives each firing.
    ///
    /// `now` is the time the update counts at (window samples, `for` clocks); the update's own timestamp
    /// only orders the values of one resource. The hub passes its own clock here when it does not trust
    /// device clocks.
    ///
    /// An update older than the resource's current value is ignored (counted in
    /// [`EngineStats::stale_updates`]). An update of `provider/admin/status` to `online` or `offline` is
    /// also a provider status event.
    pub fn on_update_at(&mut self, update: &Update, now: Timestamp, sink: &mut impl FnMut(Firing)) {
        let t = self.advance(now.as_micros(), sink);
        self.updates += 1;
        let slot_id = self.slot_for(&update.path);
        let ts = update.timestamp.as_micros();
        let Some(slot) = self.slots.get_mut(slot_id as usize) else { return };
        if slot.ts.is_some_and(|old| ts < old) {
            self.stale_updates += 1;
            return;
        }
        slot.prev = mem::replace(&mut slot.cur, Val::from_json(&update.value));
        slot.ts = Some(ts);
        let changed = !slot.prev.is_unknown() && slot.prev != slot.cur;
        self.dispatch(slot_id, t, changed, update, sink);
        if is_status_path(&update.path)
            && let Some(online) = status_of(&update.value)
        {
            self.status_changed(&update.path.provider, online, slot_id, t, sink);
        }
    }

    /// A provider went online or offline, as an update of its `admin/status` at `now`.
    pub fn on_provider_status(&mut self, provider: &Name, online: bool, now: Timestamp, sink: &mut impl FnMut(Firing)) {
        let Ok(path) = ResourcePath::parse_parts(provider.as_str(), ADMIN_SERVICE, "status") else { return };
        let value = Value::String(if online { "online" } else { "offline" }.into());
        self.on_update_at(&Update { path, value, timestamp: now }, now, sink);
    }

    /// Moves the clock to `now` and runs the timers due by then (`for` deadlines, window expiries,
    /// schedules). Call it at [`Engine::next_deadline`], or regularly.
    pub fn tick(&mut self, now: Timestamp, sink: &mut impl FnMut(Firing)) {
        self.advance(now.as_micros(), sink);
    }

    /// Tells the engine a resource's current value without evaluating anything: no firing, no window
    /// sample. The hub seeds the current values of its twin after a restart or a deploy, so conditions
    /// see them before the next update.
    pub fn seed(&mut self, update: &Update) {
        let slot_id = self.slot_for(&update.path);
        let ts = update.timestamp.as_micros();
        if let Some(slot) = self.slots.get_mut(slot_id as usize)
            && slot.ts.is_none_or(|old| ts >= old)
        {
            slot.prev = mem::replace(&mut slot.cur, Val::from_json(&update.value));
            slot.ts = Some(ts);
        }
        if is_status_path(&update.path)
            && let Some(online) = status_of(&update.value)
        {
            self.statuses.insert(update.path.provider.clone(), online);
        }
    }

    /// Tells the engine a resource exists (e.g. an action resource, which never gets updates), so rules
    /// whose variables it binds get their instances.
    pub fn discover(&mut self, path: &ResourcePath) {
        self.slot_for(path);
    }

    /// Forgets a deleted provider: removes the instances bound to it and the values of its resources.
    pub fn on_provider_deleted(&mut self, provider: &Name) {
        let mut doomed: Vec<(u32, Vec<Name>, u32)> = Vec::new();
        for (id, inst) in self.instances.iter().enumerate() {
            let Some(inst) = inst else { continue };
            let Some(entry) = self.entry(inst.rule) else { continue };
            let var_is_provider = |var: &str| lookup(&entry.c.vars, &inst.bindings, var).as_ref() == Some(provider);
            let bound = entry.c.binders.iter().any(|b| b.segments[0].var().is_some_and(var_is_provider))
                || matches!(&entry.c.kind, Kind::Status { provider: Segment::Var { name, .. }, .. } if var_is_provider(name));
            if bound {
                doomed.push((id as u32, inst.bindings.clone(), inst.rule));
            }
        }
        for (id, bindings, rule) in doomed {
            if let Some(e) = self.rules.get_mut(rule as usize).and_then(Option::as_mut) {
                e.instances.remove(&bindings);
            }
            self.drop_instance(id);
        }
        for slot in self.slots.iter_mut().filter(|s| &s.path.provider == provider) {
            slot.cur = Val::Unknown;
            slot.prev = Val::Unknown;
            slot.ts = None;
            slot.rebind = true;
        }
        self.statuses.remove(provider);
    }

    // ---- internals ----

    fn entry(&self, idx: u32) -> Option<&Entry> {
        self.rules.get(idx as usize).and_then(Option::as_ref)
    }

    /// The slot of a path, created (with the instances its path binds) on first sight.
    fn slot_for(&mut self, path: &ResourcePath) -> u32 {
        if let Some(&id) = self.paths.get(path) {
            if self.slots.get(id as usize).is_some_and(|s| s.rebind) {
                if let Some(slot) = self.slots.get_mut(id as usize) {
                    slot.rebind = false;
                }
                for r in self.binder_rules.clone() {
                    self.bind(r, path);
                }
            }
            return id;
        }
        let id = self.slots.len() as u32;
        self.slots.push(Slot {
            path: path.clone(),
            cur: Val::Unknown,
            prev: Val::Unknown,
            ts: None,
            readers: SmallVec::default(),
            rebind: false,
        });
        self.paths.insert(path.clone(), id);
        let rules = self.binder_rules.clone();
        for r in rules {
            self.bind(r, path);
        }
        id
    }

    /// Creates the instance of rule `idx` that `path` binds, if it matches one of the rule's binders.
    fn bind(&mut self, idx: u32, path: &ResourcePath) {
        let Some(entry) = self.entry(idx) else { return };
        let found = entry.c.binders.iter().find_map(|b| b.matches(path)).map(|bound| {
            entry
                .c
                .vars
                .iter()
                .map(|v| bound.iter().find(|(n, _)| n == v).map(|(_, name)| name.clone()))
                .collect::<Option<Vec<Name>>>()
        });
        if let Some(Some(bindings)) = found {
            self.ensure_instance(idx, bindings);
        }
    }

    fn ensure_instance(&mut self, idx: u32, bindings: Vec<Name>) -> Option<u32> {
        let limits = self.limits;
        let generation = self.next_generation;
        let entry = self.rules.get_mut(idx as usize).and_then(Option::as_mut)?;
        if let Some(&id) = entry.instances.get(&bindings) {
            return Some(id);
        }
        if entry.instances.len() >= limits.max_instances_per_rule {
            entry.stats.instances_refused += 1;
            return None;
        }
        let instance = Instance {
            rule: idx,
            generation,
            bindings: bindings.clone(),
            reads: SmallVec::default(),
            state: entry.c.states.iter().map(|s| new_state(s, &limits)).collect(),
            last: None,
            trigger_slot: None,
            wake_at: None,
            next_run: None,
            last_fired: None,
        };
        let patterns = entry.c.reads.clone();
        let vars = entry.c.vars.clone();
        self.next_generation += 1;
        let id = occupy(&mut self.instances, &mut self.free_instances, instance);
        if let Some(entry) = self.rules.get_mut(idx as usize).and_then(Option::as_mut) {
            entry.instances.insert(bindings.clone(), id);
        }
        // Resolving reads may create slots, which may bind further instances (of this or other rules).
        let mut reads = SmallVec::default();
        for (i, p) in patterns.iter().enumerate() {
            let Some(path) = p.substitute(|v| lookup(&vars, &bindings, v)) else {
                if let Some(entry) = self.rules.get_mut(idx as usize).and_then(Option::as_mut) {
                    entry.instances.remove(&bindings);
                }
                if let Some(inst) = self.instances.get_mut(id as usize).and_then(Option::as_mut) {
                    inst.reads = reads;
                }
                self.drop_instance(id);
                return None;
            };
            let slot = self.slot_for(&path);
            if let Some(s) = self.slots.get_mut(slot as usize) {
                s.readers.push(Reader { inst: id, read: i as u16 });
            }
            reads.push(slot);
        }
        if let Some(inst) = self.instances.get_mut(id as usize).and_then(Option::as_mut) {
            inst.reads = reads;
        }
        self.schedule(id);
        Some(id)
    }

    fn drop_instance(&mut self, id: u32) {
        let Some(inst) = self.instances.get_mut(id as usize).and_then(Option::take) else { return };
        for &s in inst.reads.as_slice() {
            if let Some(slot) = self.slots.get_mut(s as usize) {
                slot.readers.retain(|r| r.inst != id);
            }
        }
        self.unscheduled.retain(|&u| u != id);
        self.free_instances.push(id);
    }

    /// Plans the next run of a schedule instance.
    fn schedule(&mut self, id: u32) {
        let Some(inst) = self.instances.get_mut(id as usize).and_then(Option::as_mut) else { return };
        let Some(entry) = self.rules.get(inst.rule as usize).and_then(Option::as_ref) else { return };
        let Kind::Schedule { every, at } = entry.c.kind else { return };
        match self.clock {
            Some(now) => {
                let next = next_after(now, every, at);
                inst.next_run = Some(next);
                self.timers.push(Reverse(Timer { at: next, inst: id, generation: inst.generation, schedule: true }));
            }
            None => self.unscheduled.push(id),
        }
    }

    /// Runs the timers due by `target`, then moves the clock there. Returns the clock.
    fn advance(&mut self, target: Micros, sink: &mut impl FnMut(Firing)) -> Micros {
        let target = self.clock.map_or(target, |c| c.max(target));
        while let Some(&Reverse(timer)) = self.timers.peek() {
            if timer.at > target {
                break;
            }
            self.timers.pop();
            self.clock = Some(self.clock.map_or(timer.at, |c| c.max(timer.at)));
            self.run_timer(timer, target, sink);
        }
        self.clock = Some(target);
        if !self.unscheduled.is_empty() {
            for id in mem::take(&mut self.unscheduled) {
                self.schedule(id);
            }
        }
        target
    }

    fn run_timer(&mut self, timer: Timer, target: Micros, sink: &mut impl FnMut(Firing)) {
        let Engine { instances, rules, slots, timers, firings, .. } = self;
        let Some(inst) = instances.get_mut(timer.inst as usize).and_then(Option::as_mut) else { return };
        if inst.generation != timer.generation {
            return;
        }
        let Some(entry) = rules.get_mut(inst.rule as usize).and_then(Option::as_mut) else { return };
        let mut run = Run { slots, timers, firings, sink };
        if timer.schedule {
            if inst.next_run != Some(timer.at) {
                return;
            }
            inst.next_run = None;
            if !entry.enabled {
                return;
            }
            run.run_event(entry, inst, timer.at, CauseRef::Schedule);
            if let Kind::Schedule { every, at } = entry.c.kind {
                let next = next_after(timer.at.max(target), every, at);
                inst.next_run = Some(next);
                run.timers.push(Reverse(Timer {
                    at: next,
                    inst: timer.inst,
                    generation: inst.generation,
                    schedule: true,
                }));
            }
        } else {
            if inst.wake_at != Some(timer.at) {
                return;
            }
            inst.wake_at = None;
            if entry.enabled {
                run.evaluate_when(entry, inst, timer.inst, timer.at, CauseRef::Timer);
            }
        }
    }

    /// Feeds an updated slot to its readers: window samples first, then evaluations.
    fn dispatch(&mut self, slot_id: u32, t: Micros, changed: bool, update: &Update, sink: &mut impl FnMut(Firing)) {
        let Engine { instances, rules, slots, timers, firings, .. } = self;
        let Some(slot) = slots.get(slot_id as usize) else { return };
        for r in slot.readers.as_slice() {
            let Some(inst) = instances.get_mut(r.inst as usize).and_then(Option::as_mut) else { continue };
            let Some(entry) = rules.get(inst.rule as usize).and_then(Option::as_ref) else { continue };
            if !entry.enabled {
                continue;
            }
            for &w in entry.c.windows_by_read.get(usize::from(r.read)).map_or(&[][..], Vec::as_slice) {
                if let Some(NodeState::Window(win)) = inst.state.get_mut(usize::from(w)) {
                    win.push(t, &slot.cur);
                }
            }
        }
        let mut run = Run { slots, timers, firings, sink };
        let mut previous = u32::MAX;
        for r in slot.readers.as_slice() {
            if r.inst == previous {
                continue;
            }
            let Some(inst) = instances.get_mut(r.inst as usize).and_then(Option::as_mut) else { continue };
            let Some(entry) = rules.get_mut(inst.rule as usize).and_then(Option::as_mut) else { continue };
            if !entry.enabled || !entry.c.triggers.get(usize::from(r.read)).copied().unwrap_or(false) {
                continue;
            }
            previous = r.inst;
            inst.trigger_slot = Some(slot_id);
            match entry.c.kind {
                Kind::When(_) => run.evaluate_when(entry, inst, r.inst, t, CauseRef::Update(update)),
                Kind::Update { changes_only } if changed || !changes_only => {
                    run.run_event(entry, inst, t, CauseRef::Update(update));
                }
                _ => {}
            }
        }
    }

    fn status_changed(
        &mut self,
        provider: &Name,
        online: bool,
        slot_id: u32,
        t: Micros,
        sink: &mut impl FnMut(Firing),
    ) {
        if self.statuses.insert(provider.clone(), online) == Some(online) {
            return;
        }
        for idx in self.status_rules.clone() {
            let Some(entry) = self.entry(idx) else { continue };
            let Kind::Status { provider: segment, online: wanted } = &entry.c.kind else { continue };
            if *wanted != online || !segment.accepts(provider.as_str()) {
                continue;
            }
            let bindings = if segment.var().is_some() { vec![provider.clone()] } else { Vec::new() };
            let Some(id) = self.ensure_instance(idx, bindings) else { continue };
            let Engine { instances, rules, slots, timers, firings, .. } = self;
            let Some(inst) = instances.get_mut(id as usize).and_then(Option::as_mut) else { continue };
            let Some(entry) = rules.get_mut(idx as usize).and_then(Option::as_mut) else { continue };
            if !entry.enabled {
                continue;
            }
            inst.trigger_slot = Some(slot_id);
            let mut run = Run { slots, timers, firings, sink };
            run.run_event(entry, inst, t, CauseRef::Status(provider, online));
        }
    }
}

/// Puts `value` in a free slot of `slots` (reusing one from `free` when there is one) and returns its index.
fn occupy<T>(slots: &mut Vec<Option<T>>, free: &mut Vec<u32>, value: T) -> u32 {
    if let Some(i) = free.pop()
        && let Some(slot) = slots.get_mut(i as usize)
    {
        *slot = Some(value);
        return i;
    }
    slots.push(Some(value));
    (slots.len() - 1) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_grid() {
        const H: Micros = 3_600_000_000;
        assert_eq!(next_after(0, 24 * H, 2 * H), 2 * H);
        assert_eq!(next_after(2 * H, 24 * H, 2 * H), 26 * H);
        assert_eq!(next_after(-1, H, 0), 0);
        assert_eq!(next_after(Micros::MAX - 5, H, 0), Micros::MAX);
    }
}
