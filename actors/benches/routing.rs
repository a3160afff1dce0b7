//! The cost of one routing decision over 100 rules and 20 agents, when the task matches only
//! the last rule (every rule's keywords, regexes and globs are tried first) and when it
//! matches the first, for each strategy.
//!
//! Run: `cargo bench -p ccd-actors --bench routing`. Target: under 50 µs p50 per decision.

use std::collections::HashMap;

use ccd_actors::routing::{AgentLoad, AgentView, Router, Task};
use ccd_protocol::routing::{RouteMatch, RouteRule, RouteRules, Strategy};
use criterion::{Criterion, criterion_group, criterion_main};

struct View(HashMap<String, AgentLoad>);

impl AgentView for View {
    fn load(&self, agent: &str) -> Option<AgentLoad> {
        self.0.get(agent).copied()
    }
}

fn rules(strategy: Strategy) -> RouteRules {
    let agents: Vec<String> = (0..20).map(|a| format!("agent-{a}")).collect();
    let rules = (0..100)
        .map(|i| RouteRule {
            name: Some(format!("r{i}")),
            matches: RouteMatch {
                keywords: vec![format!("topic{i}"), format!("area {i}")],
                regex: vec![format!(r"(?i)\bticket-{i}\d+\b")],
                projects: Vec::new(),
                files: vec![format!("src/mod{i}/**/*.rs"), format!("*.ext{i}")],
            },
            agents: agents.clone(),
            strategy,
            fallback: Some("agent-0".into()),
        })
        .collect();
    RouteRules { rules }
}

fn routing(c: &mut Criterion) {
    let view = View(
        (0..20)
            .map(|a| {
                let load = AgentLoad {
                    running: (a * 7 % 5) as u32,
                    breaker_open_ms: (a % 6 == 5).then_some(1000),
                    turns: 50,
                    mean_duration_ms: Some(1000 + (a * 37 % 11) * 100),
                    mean_cost_usd: Some(0.01 + (a * 13 % 7) as f64 / 1000.0),
                };
                (format!("agent-{a}"), load)
            })
            .collect(),
    );
    let last = "Please look at src/mod99/deep/file.rs and tell me why the parser fails on \
                long inputs; the error shows up when the input has more than a few thousand \
                lines, see the attached log (ticket-9912) and compare with topic99.";
    let first = "topic0: a short task";
    let mut group = c.benchmark_group("route");
    for strategy in [
        Strategy::First,
        Strategy::RoundRobin,
        Strategy::LeastBusy,
        Strategy::LowestLatency,
        Strategy::LowestCost,
    ] {
        let router = Router::compile(&rules(strategy)).expect("valid rules");
        let d = router.decide(
            Task {
                text: last,
                project: None,
            },
            &view,
        );
        assert_eq!(d.rule, Some(99), "the last rule decides: {d:?}");
        assert!(d.agent.is_some());
        group.bench_function(format!("last_of_100/{}", strategy.as_str()), |b| {
            b.iter(|| {
                router.decide(
                    Task {
                        text: last,
                        project: None,
                    },
                    &view,
                )
            })
        });
        group.bench_function(format!("first_of_100/{}", strategy.as_str()), |b| {
            b.iter(|| {
                router.decide(
                    Task {
                        text: first,
                        project: None,
                    },
                    &view,
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
