//! Agent definitions (Claude Code subagents), orchestration rules and hooks, kept sealed.
//!
//! Definitions are imported from a directory of subagent `.md` files (YAML front matter with
//! `name`, `description`, `tools`, `model`, then the prompt) or from a JSON bundle. An import
//! is all or nothing: a bad file (no front matter, an unknown or repeated field, a missing
//! name, description or prompt) or a name used twice refuses the whole import, naming the file
//! and line. Everything is sealed ([`crate::seal`]) before it reaches the writer, so the
//! database, its WAL and backups hold only ciphertext.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use actix::prelude::*;
use ccd_protocol::RpcError;
use ccd_protocol::types::AgentDef;
use serde_json::Value;

use crate::error::ActorError;
use crate::reader::Reader;
use crate::seal::{self, MasterKey};
use crate::store;
use crate::supervise::Call;
use crate::writer::{Write, WriterActor};

/// A definition parsed from a file, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub def: AgentDef,
    pub source: String,
}

fn bad(source: &str, line: usize, why: impl std::fmt::Display) -> String {
    format!("{source}:{line}: {why}")
}

/// Parse one Claude Code subagent file.
pub fn parse_markdown(source: &str, text: &str) -> Result<AgentDef, String> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, l)) if l.trim_end() == "---" => {}
        _ => {
            return Err(bad(
                source,
                1,
                "missing front matter: the file must start with a `---` line",
            ));
        }
    }
    let mut fields: BTreeMap<&str, (usize, String)> = BTreeMap::new();
    let mut body_start = None;
    for (i, line) in lines.by_ref() {
        let n = i + 1;
        if line.trim_end() == "---" {
            body_start = Some(n);
            break;
        }
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(bad(
                source,
                n,
                format!("expected `key: value`, got `{}`", line.trim()),
            ));
        };
        let key = key.trim();
        if !["name", "description", "tools", "model"].contains(&key) {
            return Err(bad(
                source,
                n,
                format!("unknown field `{key}` (known: name, description, tools, model)"),
            ));
        }
        let value = value
            .trim()
            .trim_matches(|c| c == '"' || c == '\'')
            .to_string();
        if fields.insert(key, (n, value)).is_some() {
            return Err(bad(source, n, format!("field `{key}` given twice")));
        }
    }
    let Some(end) = body_start else {
        return Err(bad(
            source,
            text.lines().count().max(1),
            "front matter is not closed with a `---` line",
        ));
    };
    let take = |k: &str| {
        fields
            .get(k)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let name = take("name").ok_or_else(|| bad(source, 1, "missing field `name`"))?;
    if let Some((n, _)) = fields.get("name") {
        validate_name(&name).map_err(|e| bad(source, *n, e))?;
    }
    let description =
        take("description").ok_or_else(|| bad(source, 1, "missing field `description`"))?;
    let tools = take("tools")
        .map(|t| {
            t.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let prompt: String = text
        .lines()
        .skip(end)
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string();
    if prompt.is_empty() {
        return Err(bad(
            source,
            end + 1,
            "the prompt (after the front matter) is empty",
        ));
    }
    Ok(AgentDef {
        name,
        description,
        tools,
        model: take("model"),
        prompt,
    })
}

fn validate_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid agent name (1 to 64 of a-z, 0-9, `-`, `_`)"
        ))
    }
}

/// The subagent file for a definition (what the VFS serves as `agents/<name>.md`).
pub fn to_markdown(def: &AgentDef) -> String {
    let mut out = format!(
        "---\nname: {}\ndescription: {}\n",
        def.name, def.description
    );
    if !def.tools.is_empty() {
        out.push_str(&format!("tools: {}\n", def.tools.join(", ")));
    }
    if let Some(m) = &def.model {
        out.push_str(&format!("model: {m}\n"));
    }
    out.push_str("---\n\n");
    out.push_str(&def.prompt);
    out.push('\n');
    out
}

/// Read every definition at `path`: a directory of `.md` files, or a JSON bundle
/// `{"agents": [...]}`. All or nothing; duplicate names are refused.
pub fn load(path: &Path) -> Result<Vec<Parsed>, String> {
    let mut parsed = Vec::new();
    if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "md"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(format!("{}: no .md files", path.display()));
        }
        for file in files {
            let source = file.display().to_string();
            let text = std::fs::read_to_string(&file).map_err(|e| format!("{source}: {e}"))?;
            parsed.push(Parsed {
                def: parse_markdown(&source, &text)?,
                source: format!("{source}:1"),
            });
        }
    } else {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| format!("{source}: {e}"))?;
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Bundle {
            agents: Vec<AgentDef>,
        }
        let bundle: Bundle = serde_json::from_str(&text).map_err(|e| bad(&source, e.line(), e))?;
        for (i, def) in bundle.agents.into_iter().enumerate() {
            let at = format!("{source}: agents[{i}]");
            validate_name(&def.name).map_err(|e| format!("{at}: {e}"))?;
            if def.description.trim().is_empty() || def.prompt.trim().is_empty() {
                return Err(format!(
                    "{at}: `description` and `prompt` must not be empty"
                ));
            }
            parsed.push(Parsed { def, source: at });
        }
    }
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for p in &parsed {
        if let Some(first) = seen.insert(p.def.name.clone(), p.source.clone()) {
            return Err(format!(
                "duplicate agent name `{}` in {first} and {}",
                p.def.name, p.source
            ));
        }
    }
    Ok(parsed)
}

/// Names under which things are sealed: also the associated data of each blob.
fn agent_file(name: &str) -> String {
    format!("agents/{name}.md")
}

pub const RULES_FILE: &str = "orchestrator.json";
pub const HOOKS_FILE: &str = "hooks.json";

/// The agent, orchestrator and hooks methods.
#[derive(Clone)]
pub struct AgentService {
    writer: Addr<WriterActor>,
    reader: Reader,
    key: Arc<MasterKey>,
    /// Told after every change (the VFS rebuilds its view).
    changed: Arc<tokio::sync::Notify>,
}

impl AgentService {
    pub fn new(writer: Addr<WriterActor>, reader: Reader, key: Arc<MasterKey>) -> Self {
        AgentService {
            writer,
            reader,
            key,
            changed: Default::default(),
        }
    }

    /// Notified after every change of definitions, rules or hooks.
    pub fn changes(&self) -> Arc<tokio::sync::Notify> {
        self.changed.clone()
    }

    async fn write<O: store::WriteOp>(&self, op: O) -> Result<O::Output, ActorError> {
        self.writer
            .send(Call(Write(op)))
            .await
            .unwrap_or_else(|_| Err(ActorError::internal("writer", "mailbox closed")))
    }

    fn seal_json(&self, file: &str, value: &impl serde::Serialize) -> Result<Vec<u8>, ActorError> {
        let json = serde_json::to_vec(value).map_err(|e| ActorError::internal("encoding", e))?;
        seal::seal(&self.key, file, &json)
            .map_err(|e| ActorError::Internal(format!("sealing {file}: {e:#}")))
    }

    fn open_json<T: serde::de::DeserializeOwned>(
        &self,
        file: &str,
        blob: &[u8],
    ) -> Result<T, ActorError> {
        let json = seal::open(&self.key, file, blob).map_err(|e| {
            ActorError::Internal(format!(
                "{e:#} (is CCD_MASTER_KEY or master.key the key these were sealed with?)"
            ))
        })?;
        serde_json::from_slice(&json)
            .map_err(|e| ActorError::internal(&format!("reading {file}"), e))
    }

    /// `agent.import`.
    pub async fn import(
        self,
        path: String,
    ) -> Result<ccd_protocol::types::AgentImported, ActorError> {
        let p = Path::new(&path);
        if !p.is_absolute() {
            return Err(RpcError::invalid_params(format!(
                "invalid params for agent.import: `path`: must be absolute, got `{path}`"
            ))
            .into());
        }
        let parsed = load(p).map_err(|e| {
            ActorError::Rpc(RpcError::invalid_params(format!(
                "agent.import refused, nothing stored: {e}"
            )))
        })?;
        let mut items = Vec::new();
        for p in &parsed {
            let file = agent_file(&p.def.name);
            items.push((file.clone(), self.seal_json(&file, &p.def)?));
        }
        let replaced = self.write(store::PutSealed { items }).await?;
        self.changed.notify_one();
        let names: Vec<String> = parsed.iter().map(|p| p.def.name.clone()).collect();
        Ok(ccd_protocol::types::AgentImported {
            imported: names,
            replaced,
        })
    }

    /// Every definition, opened.
    pub async fn all(&self) -> Result<Vec<AgentDef>, ActorError> {
        let rows = self
            .reader
            .read("listing agents", |c| {
                store::sealed_with_prefix(c, "agents/")
            })
            .await?;
        rows.iter()
            .map(|(file, blob)| self.open_json::<AgentDef>(file, blob))
            .collect()
    }

    pub async fn get(self, name: String) -> Result<ccd_protocol::types::AgentDetail, ActorError> {
        let file = agent_file(&name);
        let lookup = file.clone();
        let blob = self
            .reader
            .read("reading an agent", move |c| store::sealed(c, &lookup))
            .await?
            .ok_or_else(|| ActorError::NotFound(format!("no agent named `{name}`")))?;
        let def: AgentDef = self.open_json(&file, &blob)?;
        Ok(ccd_protocol::types::AgentDetail {
            markdown: to_markdown(&def),
            agent: def,
        })
    }

    pub async fn delete(
        self,
        name: String,
    ) -> Result<ccd_protocol::types::AgentDeleted, ActorError> {
        let removed = self
            .write(store::DeleteSealed {
                name: agent_file(&name),
            })
            .await?;
        if !removed {
            return Err(ActorError::NotFound(format!("no agent named `{name}`")));
        }
        self.changed.notify_one();
        Ok(ccd_protocol::types::AgentDeleted { name })
    }

    /// Set a sealed JSON document (rules or hooks).
    pub async fn set_doc(self, file: &'static str, value: Value) -> Result<Value, ActorError> {
        let blob = self.seal_json(file, &value)?;
        self.write(store::PutSealed {
            items: vec![(file.to_string(), blob)],
        })
        .await?;
        self.changed.notify_one();
        Ok(value)
    }

    /// A sealed JSON document, or null when never set.
    pub async fn get_doc(self, file: &'static str) -> Result<Value, ActorError> {
        let blob = self
            .reader
            .read("reading a sealed document", move |c| store::sealed(c, file))
            .await?;
        match blob {
            Some(b) => self.open_json(file, &b),
            None => Ok(Value::Null),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "---\nname: reviewer\ndescription: Reviews diffs\ntools: Read, Grep\nmodel: sonnet\n---\n\nYou review code.\n";

    #[test]
    fn parses_and_renders_subagent_files() {
        let def = parse_markdown("a.md", GOOD).unwrap();
        assert_eq!(def.name, "reviewer");
        assert_eq!(def.tools, ["Read", "Grep"]);
        assert_eq!(def.model.as_deref(), Some("sonnet"));
        assert_eq!(def.prompt, "You review code.");
        assert_eq!(parse_markdown("b.md", &to_markdown(&def)).unwrap(), def);
    }

    #[test]
    fn bad_files_name_the_file_and_line() {
        for (text, needle) in [
            ("no front matter\n", "a.md:1: missing front matter"),
            (
                "---\nname: x\ncolor: red\n---\nhi\n",
                "a.md:3: unknown field `color`",
            ),
            (
                "---\nname: x\nname: y\ndescription: d\n---\nhi\n",
                "a.md:3: field `name` given twice",
            ),
            ("---\ndescription: d\n---\nhi\n", "missing field `name`"),
            (
                "---\nname: x\ndescription: d\n---\n\n",
                "prompt (after the front matter) is empty",
            ),
            (
                "---\nname: Bad Name\ndescription: d\n---\nhi\n",
                "a.md:2: `Bad Name` is not a valid agent name",
            ),
            (
                "---\nname: x\ndescription: d\nhi\n",
                "a.md:4: expected `key: value`, got `hi`",
            ),
            ("---\nname: x\ndescription: d\n", "not closed"),
        ] {
            let err = parse_markdown("a.md", text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_directory_import_is_all_or_nothing_and_refuses_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.md"), GOOD).unwrap();
        std::fs::write(dir.path().join("b.md"), GOOD.replace("reviewer", "writer")).unwrap();
        assert_eq!(load(dir.path()).unwrap().len(), 2);
        std::fs::write(dir.path().join("c.md"), GOOD).unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(err.contains("duplicate agent name `reviewer`"), "{err}");
        std::fs::write(dir.path().join("c.md"), "oops").unwrap();
        assert!(load(dir.path()).unwrap_err().contains("c.md:1"));
    }
}
