//! Which imported definitions every agent run is offered as Claude Code subagents
//! (`agents.expose`), and the `--agents` JSON that offers them.

use ccd_protocol::types::AgentDef;
use serde::{Deserialize, Serialize};

/// The `[agents]` section of the configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsConfig {
    /// Which definitions every run (`ccd query`, `ccd batch`, `ccd launch`) is offered as
    /// subagents: `"all"`, `"none"`, or a list of names.
    pub expose: Expose,
}

impl Default for Expose {
    fn default() -> Self {
        Expose::Mode(ExposeMode::All)
    }
}

/// `"all"`, `"none"` or `["name", ...]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "expected \"all\", \"none\" or a list of agent names"
)]
pub enum Expose {
    Mode(ExposeMode),
    Only(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExposeMode {
    All,
    None,
}

impl Expose {
    fn offers(&self, name: &str) -> bool {
        match self {
            Expose::Mode(ExposeMode::All) => true,
            Expose::Mode(ExposeMode::None) => false,
            Expose::Only(names) => names.iter().any(|n| n == name),
        }
    }

    pub fn is_none(&self) -> bool {
        matches!(self, Expose::Mode(ExposeMode::None))
            || matches!(self, Expose::Only(n) if n.is_empty())
    }
}

/// The value of Claude Code's `--agents` for `defs` as `expose` selects them:
/// `{"name": {"description", "prompt", "tools"?, "model"?}}`; `None` when it selects none.
pub fn cli_agents_json(defs: &[AgentDef], expose: &Expose) -> Option<serde_json::Value> {
    let offered: serde_json::Map<String, serde_json::Value> = defs
        .iter()
        .filter(|d| expose.offers(&d.name))
        .map(|d| {
            let mut agent = serde_json::json!({
                "description": d.description,
                "prompt": d.prompt,
            });
            if !d.tools.is_empty() {
                agent["tools"] = serde_json::json!(d.tools);
            }
            if let Some(model) = &d.model {
                agent["model"] = serde_json::json!(model);
            }
            (d.name.clone(), agent)
        })
        .collect();
    (!offered.is_empty()).then_some(serde_json::Value::Object(offered))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(name: &str, tools: &[&str], model: Option<&str>) -> AgentDef {
        AgentDef {
            name: name.into(),
            description: format!("{name} does things"),
            tools: tools.iter().map(|t| t.to_string()).collect(),
            model: model.map(str::to_string),
            prompt: format!("You are {name}."),
            extra: Default::default(),
        }
    }

    #[test]
    fn the_json_has_what_claude_code_takes_for_the_selected_agents() {
        let defs = [
            def("reviewer", &["Read", "Grep"], Some("sonnet")),
            def("writer", &[], None),
        ];
        let all = cli_agents_json(&defs, &AgentsConfig::default().expose).unwrap();
        assert_eq!(
            all,
            serde_json::json!({
                "reviewer": {"description": "reviewer does things", "prompt": "You are reviewer.",
                             "tools": ["Read", "Grep"], "model": "sonnet"},
                "writer": {"description": "writer does things", "prompt": "You are writer."}
            })
        );
        let only = cli_agents_json(&defs, &Expose::Only(vec!["writer".into()])).unwrap();
        assert_eq!(only.as_object().map(|o| o.len()), Some(1), "{only}");
        assert!(only.get("writer").is_some(), "{only}");
        assert_eq!(
            cli_agents_json(&defs, &Expose::Mode(ExposeMode::None)),
            None
        );
        assert_eq!(cli_agents_json(&[], &AgentsConfig::default().expose), None);
    }

    #[test]
    fn expose_reads_a_word_or_a_list() {
        let c: AgentsConfig = serde_json::from_str(r#"{"expose": "none"}"#).unwrap();
        assert!(c.expose.is_none());
        let c: AgentsConfig = serde_json::from_str(r#"{"expose": ["a", "b"]}"#).unwrap();
        assert_eq!(c.expose, Expose::Only(vec!["a".into(), "b".into()]));
        let bad = serde_json::from_str::<AgentsConfig>(r#"{"expose": "some"}"#).unwrap_err();
        assert!(
            bad.to_string()
                .contains(r#""all", "none" or a list of agent names"#),
            "{bad}"
        );
    }
}
