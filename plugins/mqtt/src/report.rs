//! What one call produces: its output, and its warnings, limited so that a flood of bad messages costs a few
//! log lines, not one per message.

use std::fmt;

use hub_plugin_sdk::prelude::*;

/// Warnings written in full per call; the rest are counted in one summary line.
pub const WARNINGS_PER_CALL: usize = 5;

/// The most updates one call returns. Memory is bounded (32 MiB by default) and the output is held twice (as
/// values, then as JSON); past this budget the rest of the batch is skipped with a warning.
pub const MAX_UPDATES_PER_CALL: usize = 32_768;

/// The longest topic quoted in a log line, in bytes.
const QUOTED_TOPIC_BYTES: usize = 96;

/// The output of one call under construction, with its context and its warning budget.
pub struct Sink<'c, 'a> {
    /// The call's context.
    pub ctx: &'c mut Context<'a>,
    /// The effects so far.
    pub out: Output,
    shown: usize,
    hidden: usize,
    unmatched: usize,
    first_unmatched: Option<String>,
}

impl<'c, 'a> Sink<'c, 'a> {
    /// An empty output over `ctx`.
    pub fn new(ctx: &'c mut Context<'a>) -> Self {
        Sink { ctx, out: Output::new(), shown: 0, hidden: 0, unmatched: 0, first_unmatched: None }
    }

    /// Reports something skipped (a message, a SenML record, a resource) on `topic`. The reason is only
    /// formatted while the budget lasts.
    pub fn skip(&mut self, topic: &str, reason: fmt::Arguments<'_>) {
        if self.shown < WARNINGS_PER_CALL {
            self.shown += 1;
            self.ctx.warn(format!("{}: {reason}", Quoted(topic)));
        } else {
            self.hidden += 1;
        }
    }

    /// Whether the call's update budget is spent.
    pub fn full(&self) -> bool {
        self.out.updates.len() >= MAX_UPDATES_PER_CALL
    }

    /// Counts a message that matched no mapping and no default topic: normal under a broad subscription.
    pub fn unmatched(&mut self, topic: &str) {
        if self.first_unmatched.is_none() {
            self.first_unmatched = Some(Quoted(topic).to_string());
        }
        self.unmatched += 1;
    }

    /// Writes the summaries and returns the output (the SDK appends the context's log lines to it).
    pub fn finish(self) -> Output {
        let Sink { ctx, out, hidden, unmatched, first_unmatched, .. } = self;
        if hidden > 0 {
            ctx.warn(format!(
                "{hidden} more skipped messages, records or resources in this batch (warnings are limited to \
                 {WARNINGS_PER_CALL} per batch)"
            ));
        }
        if let Some(first) = first_unmatched {
            ctx.debug(format!("{unmatched} messages matched no mapping and no default topic (the first: {first})"));
        }
        out
    }
}

/// A topic for a log line: quoted, escaped, cut to a readable length.
pub struct Quoted<'t>(pub &'t str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0;
        if text.len() <= QUOTED_TOPIC_BYTES {
            return write!(f, "{text:?}");
        }
        let mut cut = QUOTED_TOPIC_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        write!(f, "{:?}… ({} bytes)", &text[..cut], text.len())
    }
}
