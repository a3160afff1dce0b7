//! The router: compiled routing rules, and the decision for one task.
//!
//! Pure logic over a snapshot of the agents ([`AgentView`]): what each agent has running, its
//! breaker, and its recorded turns. Rules are compiled once when they are set: the keywords of
//! every rule into one Aho-Corasick automaton, their regular expressions into one `RegexSet`,
//! their globs into one `GlobSet`. A decision scans the task text once with each, whatever the
//! number of rules, then takes the first rule whose tests all hold.

use std::sync::atomic::{AtomicU64, Ordering};

use aho_corasick::AhoCorasick;
use ccd_protocol::routing::{RouteCandidate, RouteDecision, RouteRule, RouteRules, Strategy};
use globset::{Glob, GlobSet, GlobSetBuilder};
use regex::RegexSet;

/// At most this many rules, agents per rule, and tests per rule.
pub const MAX_RULES: usize = 1000;
pub const MAX_ITEMS: usize = 256;

/// What the router knows of one agent at the moment of a decision.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AgentLoad {
    /// Queries of this agent running now.
    pub running: u32,
    /// Set while the agent's breaker refuses runs: the time until it lets one through.
    pub breaker_open_ms: Option<u64>,
    /// Recorded turns, and their mean duration and cost.
    pub turns: u64,
    pub mean_duration_ms: Option<u64>,
    pub mean_cost_usd: Option<f64>,
}

/// The agents as the router sees them: `None` for an agent that does not exist.
pub trait AgentView {
    fn load(&self, agent: &str) -> Option<AgentLoad>;
}

/// A task to route.
#[derive(Debug, Clone, Copy)]
pub struct Task<'a> {
    pub text: &'a str,
    pub project: Option<&'a str>,
}

/// A rule that cannot be compiled: which one, which field, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("rule {index} ({name}): `{field}`: {reason}")]
pub struct RuleError {
    /// 1-based, as people count rules in a file.
    pub index: usize,
    pub name: String,
    pub field: &'static str,
    pub reason: String,
}

struct Compiled {
    name: String,
    rule: RouteRule,
    /// Decisions made by this rule, for `round_robin`.
    turn: AtomicU64,
}

/// One automaton or set over the tests of every rule, and the rule each of its patterns
/// belongs to.
struct Scan<T> {
    set: T,
    rule_of: Vec<usize>,
}

impl<T> Scan<T> {
    /// `None` when no rule gives a pattern for it.
    fn build(
        rule_of: Vec<usize>,
        field: &'static str,
        set: impl FnOnce() -> Result<T, String>,
    ) -> Result<Option<Self>, RuleError> {
        if rule_of.is_empty() {
            return Ok(None);
        }
        let set = set().map_err(|e| Self::error(field, e))?;
        Ok(Some(Scan { set, rule_of }))
    }

    /// Each pattern was compiled alone first, which names the rule of a bad one; this is what
    /// is left (the patterns of all rules together over a size limit).
    fn error(field: &'static str, reason: impl ToString) -> RuleError {
        RuleError {
            index: 0,
            name: "all rules together".into(),
            field,
            reason: reason.to_string(),
        }
    }
}

/// Compiled rules.
#[derive(Default)]
pub struct Router {
    rules: Vec<Compiled>,
    /// Lowercased keywords.
    keywords: Option<Scan<AhoCorasick>>,
    regex: Option<Scan<RegexSet>>,
    files: Option<Scan<GlobSet>>,
}

impl Router {
    /// Compile `rules`, refusing the first one that is not valid with what is wrong with it.
    pub fn compile(rules: &RouteRules) -> Result<Router, RuleError> {
        if rules.rules.len() > MAX_RULES {
            return Err(RuleError {
                index: MAX_RULES + 1,
                name: "rules".into(),
                field: "rules",
                reason: format!("{} rules; at most {MAX_RULES}", rules.rules.len()),
            });
        }
        let compiled = rules
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| compile_rule(i, rule))
            .collect::<Result<Vec<_>, _>>()?;
        let mut keywords = (Vec::new(), Vec::new());
        let mut regex = (Vec::new(), Vec::new());
        let mut globs = (GlobSetBuilder::new(), Vec::new());
        for (i, rule) in rules.rules.iter().enumerate() {
            let m = &rule.matches;
            for k in &m.keywords {
                keywords.0.push(k.trim().to_lowercase());
                keywords.1.push(i);
            }
            for r in &m.regex {
                regex.0.push(r.as_str());
                regex.1.push(i);
            }
            for g in &m.files {
                // Each glob was compiled alone by `compile_rule`, which named a bad one.
                let one = file_globs(g).map_err(|e| Scan::<()>::error("match.files", e))?;
                for glob in one {
                    globs.0.add(glob);
                    globs.1.push(i);
                }
            }
        }
        let keywords = Scan::build(keywords.1, "match.keywords", || {
            AhoCorasick::new(&keywords.0).map_err(|e| e.to_string())
        })?;
        let regex = Scan::build(regex.1, "match.regex", || {
            regex::RegexSetBuilder::new(&regex.0)
                .size_limit(64 << 20)
                .build()
                .map_err(|e| e.to_string())
        })?;
        let files = Scan::build(globs.1, "match.files", || {
            globs.0.build().map_err(|e| e.to_string())
        })?;
        Ok(Router {
            rules: compiled,
            keywords,
            regex,
            files,
        })
    }

    /// For each rule, whether its keyword, regex and file tests hold for the task: one scan of
    /// the text with each set, whatever the number of rules.
    fn tests(&self, task: Task<'_>, files: &[String]) -> Vec<[bool; 3]> {
        let mut hit = vec![[false; 3]; self.rules.len()];
        if let Some(k) = &self.keywords {
            let lower = task.text.to_lowercase();
            for m in k.set.find_overlapping_iter(&lower) {
                if is_whole_word(&lower, m.start(), m.end()) {
                    hit[k.rule_of[m.pattern().as_usize()]][0] = true;
                }
            }
        }
        if let Some(r) = &self.regex {
            for p in r.set.matches(task.text).iter() {
                hit[r.rule_of[p]][1] = true;
            }
        }
        if let Some(f) = &self.files {
            for file in files {
                for p in f.set.matches(file) {
                    hit[f.rule_of[p]][2] = true;
                }
            }
        }
        hit
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The decision for `task`: the first rule that matches, and its strategy's choice among
    /// the agents that can take the task, else its fallback.
    pub fn decide(&self, task: Task<'_>, agents: &dyn AgentView) -> RouteDecision {
        let files = mentioned_files(task.text);
        let hit = self.tests(task, &files);
        let Some((index, rule)) = self
            .rules
            .iter()
            .enumerate()
            .find(|(i, r)| r.matches(task, hit[*i]))
        else {
            return RouteDecision {
                rule: None,
                rule_name: None,
                strategy: None,
                files,
                candidates: Vec::new(),
                agent: None,
                fallback: false,
                reason: if self.rules.is_empty() {
                    "there are no routing rules".into()
                } else {
                    format!("none of the {} rules matched", self.rules.len())
                },
            };
        };
        let strategy = rule.rule.strategy;
        let start = match strategy {
            Strategy::RoundRobin => rule.turn.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        let n = rule.rule.agents.len();
        let mut candidates: Vec<RouteCandidate> = rule
            .rule
            .agents
            .iter()
            .enumerate()
            .map(|(pos, name)| candidate(name, agents.load(name), strategy, pos, start, n))
            .collect();
        let best = candidates
            .iter()
            .enumerate()
            .filter_map(|(pos, c)| c.score.map(|s| (pos, s)))
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
            .map(|(pos, _)| pos);
        let (agent, fallback, reason) = match best {
            Some(pos) => {
                let c = &candidates[pos];
                let why = match strategy {
                    Strategy::First => "the first that can take it".to_string(),
                    Strategy::RoundRobin => "next in turn".to_string(),
                    Strategy::LeastBusy => format!("fewest running ({})", c.running),
                    Strategy::LowestLatency => match c.mean_duration_ms {
                        Some(ms) => format!("lowest mean duration ({ms} ms)"),
                        None => "no recorded turns yet, so tried first".into(),
                    },
                    Strategy::LowestCost => match c.mean_cost_usd {
                        Some(usd) => format!("lowest mean cost (${usd:.4})"),
                        None => "no recorded turns yet, so tried first".into(),
                    },
                };
                (
                    Some(c.agent.clone()),
                    false,
                    format!("{}: {}", rule.name, why),
                )
            }
            None => {
                let why = unavailable_list(&candidates);
                match rule.rule.fallback.as_deref() {
                    Some(fb) => match agents.load(fb) {
                        Some(load) if load.breaker_open_ms.is_none() => {
                            if !candidates.iter().any(|c| c.agent == fb) {
                                let mut c = candidate(fb, Some(load), Strategy::First, 0, 0, 1);
                                c.score = None;
                                candidates.push(c);
                            }
                            (
                                Some(fb.to_string()),
                                true,
                                format!("{}: fallback `{fb}`, since {why}", rule.name),
                            )
                        }
                        Some(load) => (
                            None,
                            false,
                            format!(
                                "{}: {why}, and the fallback `{fb}` has its breaker open \
                                 (retry in {} ms)",
                                rule.name,
                                load.breaker_open_ms.unwrap_or(0)
                            ),
                        ),
                        None => (
                            None,
                            false,
                            format!(
                                "{}: {why}, and the fallback `{fb}` does not exist",
                                rule.name
                            ),
                        ),
                    },
                    None => (
                        None,
                        false,
                        format!("{}: {why}, and it has no fallback", rule.name),
                    ),
                }
            }
        };
        RouteDecision {
            rule: u32::try_from(index).ok(),
            rule_name: Some(rule.name.clone()),
            strategy: Some(strategy),
            files,
            candidates,
            agent,
            fallback,
            reason,
        }
    }
}

fn compile_rule(i: usize, rule: &RouteRule) -> Result<Compiled, RuleError> {
    let name = rule
        .name
        .clone()
        .unwrap_or_else(|| format!("rule {}", i + 1));
    let err = |field: &'static str, reason: String| RuleError {
        index: i + 1,
        name: name.clone(),
        field,
        reason,
    };
    if rule.agents.is_empty() {
        return Err(err("agents", "names no agent; give at least one".into()));
    }
    let m = &rule.matches;
    for (field, n) in [
        ("agents", rule.agents.len()),
        ("match.keywords", m.keywords.len()),
        ("match.regex", m.regex.len()),
        ("match.projects", m.projects.len()),
        ("match.files", m.files.len()),
    ] {
        if n > MAX_ITEMS {
            return Err(err(field, format!("{n} items; at most {MAX_ITEMS}")));
        }
    }
    if let Some(k) = m.keywords.iter().find(|k| k.trim().is_empty()) {
        return Err(err("match.keywords", format!("`{k}` is empty")));
    }
    if !m.regex.is_empty() {
        regex::RegexSetBuilder::new(&m.regex)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| err("match.regex", e.to_string()))?;
    }
    for g in &m.files {
        file_globs(g).map_err(|e| err("match.files", e.to_string()))?;
    }
    Ok(Compiled {
        name,
        rule: rule.clone(),
        turn: AtomicU64::new(0),
    })
}

/// The globs a `files` pattern stands for: itself, as in a shell (`*` and `?` stay within one
/// directory, `**` crosses them), and for a pattern without a slash (`*.md`) the same file in
/// any directory (`**/*.md`), as in a `.gitignore`.
fn file_globs(pattern: &str) -> Result<Vec<Glob>, globset::Error> {
    let mut out = vec![
        globset::GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()?,
    ];
    if !pattern.contains('/') {
        out.push(
            globset::GlobBuilder::new(&format!("**/{pattern}"))
                .literal_separator(true)
                .build()?,
        );
    }
    Ok(out)
}

impl Compiled {
    /// Whether every test the rule gives holds; `hit`: its keyword, regex and file tests.
    fn matches(&self, task: Task<'_>, hit: [bool; 3]) -> bool {
        let m = &self.rule.matches;
        (m.keywords.is_empty() || hit[0])
            && (m.regex.is_empty() || hit[1])
            && (m.files.is_empty() || hit[2])
            && (m.projects.is_empty()
                || task
                    .project
                    .is_some_and(|p| m.projects.iter().any(|q| q == p)))
    }
}

fn candidate(
    name: &str,
    load: Option<AgentLoad>,
    strategy: Strategy,
    pos: usize,
    start: u64,
    n: usize,
) -> RouteCandidate {
    let l = load.unwrap_or_default();
    let unavailable = match load {
        None => Some("no such agent".to_string()),
        Some(AgentLoad {
            breaker_open_ms: Some(ms),
            ..
        }) => Some(format!("breaker open (retry in {ms} ms)")),
        Some(_) => None,
    };
    let score = unavailable.is_none().then(|| match strategy {
        Strategy::First => pos as f64,
        // The position counted from where this decision's turn starts.
        Strategy::RoundRobin => ((pos as u64 + n as u64 - start % n as u64) % n as u64) as f64,
        Strategy::LeastBusy => f64::from(l.running),
        Strategy::LowestLatency => l.mean_duration_ms.map_or(0.0, |ms| ms as f64),
        Strategy::LowestCost => l.mean_cost_usd.unwrap_or(0.0),
    });
    RouteCandidate {
        agent: name.to_string(),
        available: unavailable.is_none(),
        unavailable,
        running: l.running,
        turns: l.turns,
        mean_duration_ms: l.mean_duration_ms,
        mean_cost_usd: l.mean_cost_usd,
        score,
    }
}

fn unavailable_list(candidates: &[RouteCandidate]) -> String {
    let parts: Vec<String> = candidates
        .iter()
        .map(|c| {
            format!(
                "`{}` {}",
                c.agent,
                c.unavailable.as_deref().unwrap_or("unavailable")
            )
        })
        .collect();
    format!("no agent can take it ({})", parts.join(", "))
}

/// Whether `text[start..end]` stands as a whole word: no letter, digit or `_` right before or
/// after it (`test` is one in "add a test." but not in "latest").
fn is_whole_word(text: &str, start: usize, end: usize) -> bool {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    text[..start]
        .chars()
        .next_back()
        .is_none_or(|c| !is_word(c))
        && text[end..].chars().next().is_none_or(|c| !is_word(c))
}

/// The files a task mentions: words that look like paths (`src/main.rs`, `./a/b`, `@README.md`,
/// `Cargo.toml`), without surrounding quotes, brackets or punctuation. URLs are not files.
pub fn mentioned_files(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        const AROUND: &str = "\"'`()[]{}<>,;:!?*";
        let w = word
            .trim_start_matches(|c: char| AROUND.contains(c))
            .trim_end_matches(|c: char| c == '.' || AROUND.contains(c));
        let w = w.strip_prefix('@').unwrap_or(w);
        let w = w.strip_prefix("./").unwrap_or(w);
        // Not files: URLs, and abbreviations such as `e.g.` (one letter between dots).
        if w.is_empty()
            || w.contains("://")
            || w.len() > 4096
            || w.split('.').all(|s| s.chars().count() <= 1)
        {
            continue;
        }
        let file_name = w.rsplit('/').next().unwrap_or(w);
        let has_ext = file_name.rsplit_once('.').is_some_and(|(stem, ext)| {
            !stem.is_empty()
                && (1..=10).contains(&ext.len())
                && ext.chars().all(|c| c.is_ascii_alphanumeric())
                && ext.chars().any(|c| c.is_ascii_alphabetic())
        });
        if (w.contains('/') || has_ext) && !out.iter().any(|f| f == w) {
            out.push(w.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use ccd_protocol::routing::RouteMatch;

    use super::*;

    struct View(HashMap<&'static str, AgentLoad>);

    impl AgentView for View {
        fn load(&self, agent: &str) -> Option<AgentLoad> {
            self.0.get(agent).copied()
        }
    }

    fn view(agents: &[(&'static str, AgentLoad)]) -> View {
        View(agents.iter().copied().collect())
    }

    fn rule(m: RouteMatch, agents: &[&str], strategy: Strategy) -> RouteRule {
        RouteRule {
            name: None,
            matches: m,
            agents: agents.iter().map(|a| a.to_string()).collect(),
            strategy,
            fallback: None,
        }
    }

    fn task(text: &str) -> Task<'_> {
        Task {
            text,
            project: None,
        }
    }

    fn router(rules: Vec<RouteRule>) -> Router {
        Router::compile(&RouteRules { rules }).expect("valid rules")
    }

    #[test]
    fn the_first_matching_rule_decides_and_every_test_must_hold() {
        let r = router(vec![
            rule(
                RouteMatch {
                    keywords: vec!["review".into()],
                    projects: vec!["web".into()],
                    ..Default::default()
                },
                &["web-reviewer"],
                Strategy::First,
            ),
            rule(
                RouteMatch {
                    keywords: vec!["Review".into(), "audit".into()],
                    ..Default::default()
                },
                &["reviewer"],
                Strategy::First,
            ),
            rule(RouteMatch::default(), &["general"], Strategy::First),
        ]);
        let v = view(&[
            ("web-reviewer", AgentLoad::default()),
            ("reviewer", AgentLoad::default()),
            ("general", AgentLoad::default()),
        ]);
        let web = Task {
            text: "Please REVIEW this",
            project: Some("web"),
        };
        assert_eq!(r.decide(web, &v).agent.as_deref(), Some("web-reviewer"));
        let api = Task {
            text: "Please review this",
            project: Some("api"),
        };
        let d = r.decide(api, &v);
        assert_eq!(d.agent.as_deref(), Some("reviewer"));
        assert_eq!((d.rule, d.rule_name.as_deref()), (Some(1), Some("rule 2")));
        // Keywords are whole words: "reviewers" and "previews" are not "review".
        let d = r.decide(task("previews for reviewers"), &v);
        assert_eq!(d.agent.as_deref(), Some("general"));
        assert_eq!(d.rule, Some(2));
    }

    #[test]
    fn regexes_and_file_globs() {
        let r = router(vec![
            rule(
                RouteMatch {
                    files: vec!["src/**/*.rs".into(), "*.toml".into()],
                    ..Default::default()
                },
                &["rust"],
                Strategy::First,
            ),
            rule(
                RouteMatch {
                    regex: vec![r"(?i)\bfix(es|ed)?\b.*#\d+".into()],
                    ..Default::default()
                },
                &["fixer"],
                Strategy::First,
            ),
        ]);
        let v = view(&[
            ("rust", AgentLoad::default()),
            ("fixer", AgentLoad::default()),
        ]);
        let d = r.decide(task("explain `src/actors/query.rs`, please."), &v);
        assert_eq!(d.agent.as_deref(), Some("rust"));
        assert_eq!(d.files, ["src/actors/query.rs"]);
        let d = r.decide(task("bump the version in crates/x/Cargo.toml"), &v);
        assert_eq!(d.agent.as_deref(), Some("rust"), "{d:?}");
        let d = r.decide(task("Fix the crash from #123"), &v);
        assert_eq!(d.agent.as_deref(), Some("fixer"));
        let d = r.decide(task("see docs/README.md"), &v);
        assert_eq!(d.agent, None);
        assert_eq!(d.reason, "none of the 2 rules matched");

        // `*` stays within a directory, as in a shell; `**` crosses them.
        let shallow = router(vec![rule(
            RouteMatch {
                files: vec!["src/*.rs".into()],
                ..Default::default()
            },
            &["rust"],
            Strategy::First,
        )]);
        assert!(shallow.decide(task("src/lib.rs"), &v).agent.is_some());
        assert!(shallow.decide(task("src/a/lib.rs"), &v).agent.is_none());
    }

    #[test]
    fn strategies_pick_by_their_figures_and_skip_unavailable_agents() {
        let agents = ["a", "b", "c"];
        let v = view(&[
            (
                "a",
                AgentLoad {
                    running: 2,
                    turns: 10,
                    mean_duration_ms: Some(900),
                    mean_cost_usd: Some(0.02),
                    ..Default::default()
                },
            ),
            (
                "b",
                AgentLoad {
                    running: 1,
                    turns: 10,
                    mean_duration_ms: Some(300),
                    mean_cost_usd: Some(0.05),
                    ..Default::default()
                },
            ),
            (
                "c",
                AgentLoad {
                    running: 0,
                    breaker_open_ms: Some(4000),
                    ..Default::default()
                },
            ),
        ]);
        let pick = |s: Strategy| {
            router(vec![rule(RouteMatch::default(), &agents, s)])
                .decide(task("x"), &v)
                .agent
        };
        assert_eq!(pick(Strategy::First).as_deref(), Some("a"));
        // c runs nothing but its breaker is open: b is the least busy that can take it.
        assert_eq!(pick(Strategy::LeastBusy).as_deref(), Some("b"));
        assert_eq!(pick(Strategy::LowestLatency).as_deref(), Some("b"));
        assert_eq!(pick(Strategy::LowestCost).as_deref(), Some("a"));
        let d = router(vec![rule(RouteMatch::default(), &agents, Strategy::First)])
            .decide(task("x"), &v);
        let c = &d.candidates[2];
        assert!(!c.available);
        assert_eq!(
            c.unavailable.as_deref(),
            Some("breaker open (retry in 4000 ms)")
        );
        assert_eq!(c.score, None);
    }

    #[test]
    fn an_agent_without_history_is_tried_first_by_the_history_strategies() {
        let v = view(&[
            (
                "old",
                AgentLoad {
                    turns: 5,
                    mean_duration_ms: Some(10),
                    mean_cost_usd: Some(0.001),
                    ..Default::default()
                },
            ),
            ("new", AgentLoad::default()),
        ]);
        for s in [Strategy::LowestLatency, Strategy::LowestCost] {
            let d =
                router(vec![rule(RouteMatch::default(), &["old", "new"], s)]).decide(task("x"), &v);
            assert_eq!(d.agent.as_deref(), Some("new"), "{s:?}");
            assert!(d.reason.contains("no recorded turns"), "{}", d.reason);
        }
    }

    #[test]
    fn round_robin_takes_turns_and_steps_over_an_open_breaker() {
        let r = router(vec![rule(
            RouteMatch::default(),
            &["a", "b", "c"],
            Strategy::RoundRobin,
        )]);
        let all = view(&[
            ("a", AgentLoad::default()),
            ("b", AgentLoad::default()),
            ("c", AgentLoad::default()),
        ]);
        let picks: Vec<_> = (0..6)
            .map(|_| r.decide(task("x"), &all).agent.unwrap())
            .collect();
        assert_eq!(picks, ["a", "b", "c", "a", "b", "c"]);
        let b_open = view(&[
            ("a", AgentLoad::default()),
            (
                "b",
                AgentLoad {
                    breaker_open_ms: Some(1),
                    ..Default::default()
                },
            ),
            ("c", AgentLoad::default()),
        ]);
        let picks: Vec<_> = (0..3)
            .map(|_| r.decide(task("x"), &b_open).agent.unwrap())
            .collect();
        assert_eq!(picks, ["a", "c", "c"]);
    }

    #[test]
    fn the_fallback_takes_over_when_no_agent_can() {
        let mut only = rule(RouteMatch::default(), &["gone", "tripped"], Strategy::First);
        only.fallback = Some("general".into());
        let r = router(vec![only]);
        let tripped = AgentLoad {
            breaker_open_ms: Some(2500),
            ..Default::default()
        };
        let v = view(&[("tripped", tripped), ("general", AgentLoad::default())]);
        let d = r.decide(task("x"), &v);
        assert_eq!(d.agent.as_deref(), Some("general"));
        assert!(d.fallback);
        assert!(d.reason.contains("`gone` no such agent"), "{}", d.reason);
        assert!(d.reason.contains("`tripped` breaker open"), "{}", d.reason);
        assert_eq!(
            d.candidates.last().map(|c| c.agent.as_str()),
            Some("general")
        );

        let v = view(&[("tripped", tripped), ("general", tripped)]);
        let d = r.decide(task("x"), &v);
        assert_eq!(d.agent, None);
        assert!(
            d.reason
                .contains("the fallback `general` has its breaker open")
        );
    }

    #[test]
    fn bad_rules_are_refused_naming_the_rule_and_field() {
        let mut bad = rule(
            RouteMatch {
                regex: vec!["(unclosed".into()],
                ..Default::default()
            },
            &["a"],
            Strategy::First,
        );
        bad.name = Some("fixes".into());
        let ok = rule(RouteMatch::default(), &["a"], Strategy::First);
        let e = Router::compile(&RouteRules {
            rules: vec![ok.clone(), bad],
        })
        .err()
        .expect("refused");
        assert_eq!(
            (e.index, e.name.as_str(), e.field),
            (2, "fixes", "match.regex")
        );
        assert!(
            e.to_string().starts_with("rule 2 (fixes): `match.regex`: "),
            "{e}"
        );

        let none = rule(RouteMatch::default(), &[], Strategy::First);
        let e = Router::compile(&RouteRules { rules: vec![none] })
            .err()
            .unwrap();
        assert_eq!(e.field, "agents");
        let glob = rule(
            RouteMatch {
                files: vec!["src/[".into()],
                ..Default::default()
            },
            &["a"],
            Strategy::First,
        );
        let e = Router::compile(&RouteRules { rules: vec![glob] })
            .err()
            .unwrap();
        assert_eq!(e.field, "match.files");
        // Unknown fields and strategies are refused when the rules are read.
        let typo = serde_json::json!({"rules": [{"agents": ["a"], "strategy": "fastest"}]});
        assert!(serde_json::from_value::<RouteRules>(typo).is_err());
        let typo = serde_json::json!({"rules": [{"agents": ["a"], "match": {"keyword": ["x"]}}]});
        assert!(serde_json::from_value::<RouteRules>(typo).is_err());
    }

    #[test]
    fn files_are_found_in_prose() {
        assert_eq!(
            mentioned_files(
                "Look at @src/main.rs and './tests/it.rs', then (Cargo.toml). \
                 See https://example.com/a.html or v1.2 of e.g. foo. Also README.md!"
            ),
            ["src/main.rs", "tests/it.rs", "Cargo.toml", "README.md"]
        );
        assert!(mentioned_files("nothing here at all").is_empty());
    }

    #[test]
    fn keywords_match_whole_words_in_any_script() {
        let r = router(vec![rule(
            RouteMatch {
                keywords: vec!["test".into(), "ÉTAT".into(), "code review".into()],
                ..Default::default()
            },
            &["a"],
            Strategy::First,
        )]);
        let v = view(&[("a", AgentLoad::default())]);
        let hit = |text: &str| r.decide(task(text), &v).agent.is_some();
        assert!(hit("add a test."));
        assert!(!hit("the latest"));
        assert!(!hit("testing"));
        assert!(hit("l'état du code"));
        assert!(hit("a Code Review now"));
        // A keyword inside a longer one still counts where it stands alone.
        assert!(hit("latest test"));
    }
}
