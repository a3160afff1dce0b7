//! Routing: the rules that pick an agent for a task, and the decisions they make.
//!
//! Rules are an ordered list; the first rule whose `match` holds for a task decides, and its
//! `strategy` picks one of its `agents`. A decision names the rule, every candidate with the
//! figures the strategy looked at, the chosen agent and a sentence saying why, so that
//! `route.explain` can show it without running anything.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Routing rules, tried in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteRules {
    /// The first rule whose `match` holds for a task decides.
    #[serde(default)]
    pub rules: Vec<RouteRule>,
}

/// One rule: which tasks it takes, and how it picks among its agents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// Shown in decisions; `rule N` (1-based) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What the task must look like: every test given must hold. An empty match takes every
    /// task (a catch-all, usually last).
    #[serde(default, rename = "match")]
    pub matches: RouteMatch,
    /// One or more agent names to choose among.
    pub agents: Vec<String>,
    /// How to choose among `agents` (default `first`).
    #[serde(default)]
    pub strategy: Strategy,
    /// The agent that takes the task when none of `agents` can (it does not exist, or its
    /// breaker is open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

/// The tests of a rule. Within a test any item may hold; across tests, all must.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Words or phrases, any of which appears in the task text as whole words (ignoring case).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keywords: Vec<String>,
    /// Regular expressions (Rust `regex` syntax), any of which finds a match in the task text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regex: Vec<String>,
    /// Project names, one of which is the task's project.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub projects: Vec<String>,
    /// Globs (`src/**/*.rs`, `*.md`), one of which matches a file the task mentions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

impl RouteMatch {
    pub fn is_empty(&self) -> bool {
        self.keywords.is_empty()
            && self.regex.is_empty()
            && self.projects.is_empty()
            && self.files.is_empty()
    }
}

/// How a rule chooses among its agents. Agents that cannot take the task (missing, or breaker
/// open) are never chosen; ties go to the agent listed first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The first agent listed that can take the task.
    #[default]
    First,
    /// Each decision of the rule starts one agent further along the list.
    RoundRobin,
    /// The agent with the fewest queries running now.
    LeastBusy,
    /// The agent whose recorded turns took the least time on average; an agent without
    /// recorded turns is tried first, so that it gets some.
    LowestLatency,
    /// The agent whose recorded turns cost the least on average; an agent without recorded
    /// turns is tried first.
    LowestCost,
}

impl Strategy {
    pub const fn as_str(self) -> &'static str {
        match self {
            Strategy::First => "first",
            Strategy::RoundRobin => "round_robin",
            Strategy::LeastBusy => "least_busy",
            Strategy::LowestLatency => "lowest_latency",
            Strategy::LowestCost => "lowest_cost",
        }
    }
}

/// `route.explain` params: a task to route, without running anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteExplainParams {
    /// The task text, as it would be given to `query.run`.
    pub task: String,
    /// The project the task would run in.
    #[serde(default)]
    pub project: Option<String>,
}

/// Which agent a task goes to, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RouteDecision {
    /// The index (0-based) of the rule that matched; null when none did.
    pub rule: Option<u32>,
    /// The rule's name (`rule N` when it has none); null when no rule matched.
    pub rule_name: Option<String>,
    /// The matched rule's strategy.
    pub strategy: Option<Strategy>,
    /// The files the task mentions, as the rules' `files` tests saw them.
    pub files: Vec<String>,
    /// The matched rule's agents, in its order, with what the strategy looked at.
    pub candidates: Vec<RouteCandidate>,
    /// The chosen agent; null when no rule matched or no agent can take the task.
    pub agent: Option<String>,
    /// Whether `agent` is the rule's fallback.
    pub fallback: bool,
    /// Why this agent, or why none.
    pub reason: String,
}

/// One agent a rule could choose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RouteCandidate {
    pub agent: String,
    /// Whether it can take the task; when not, `unavailable` says why.
    pub available: bool,
    pub unavailable: Option<String>,
    /// Queries of this agent running now.
    pub running: u32,
    /// Recorded turns of this agent.
    pub turns: u64,
    /// Their mean duration.
    pub mean_duration_ms: Option<u64>,
    /// Their mean cost.
    pub mean_cost_usd: Option<f64>,
    /// What the strategy compared: lower wins (position, running queries, milliseconds or
    /// dollars); null for an agent that cannot take the task.
    pub score: Option<f64>,
}
