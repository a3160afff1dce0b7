//! Agent definitions as files: Claude Code subagent `.md` files (YAML front matter with
//! `name`, `description`, `tools`, `model`, then the prompt) and JSON bundles, parsed strictly,
//! and rendered back ([`to_markdown`]). The front matter is read by hand, in the forms subagent
//! files use (see `parse_file`). [`load`] is all or nothing: a bad file (no front matter, an
//! unknown or repeated field, a missing name, description or prompt), a bad bundle entry or a
//! name used twice refuses the whole import, naming the file and line.

use std::collections::BTreeMap;
use std::path::Path;

use ccd_protocol::types::AgentDef;

/// A definition parsed from a file, with where it came from (`file:line`).
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub def: AgentDef,
    pub source: String,
}

fn bad(source: &str, line: usize, why: impl std::fmt::Display) -> String {
    format!("{source}:{line}: {why}")
}

const FIELDS: [&str; 4] = ["name", "description", "tools", "model"];

/// One `key: value` of the front matter and the lines under it (indented lines, blank lines,
/// comments, and `- item` lines when the value is empty).
struct Entry<'a> {
    line: usize,
    value: &'a str,
    block: Vec<(usize, &'a str)>,
}

impl Entry<'_> {
    /// The lines under the key that are neither blank nor comments.
    fn content(&self) -> impl Iterator<Item = (usize, &str)> {
        self.block
            .iter()
            .copied()
            .filter(|(_, l)| !blank_or_comment(l))
    }
}

fn blank_or_comment(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

fn indented(line: &str) -> bool {
    line.starts_with([' ', '\t'])
}

/// `s` without a trailing YAML comment (a `#` at the start or after a space).
fn strip_comment(s: &str) -> &str {
    let cut = s
        .char_indices()
        .find(|&(i, c)| c == '#' && (i == 0 || s[..i].ends_with([' ', '\t'])))
        .map_or(s.len(), |(i, _)| i);
    s[..cut].trim()
}

/// A quoted scalar at the start of `s` (which starts with `"` or `'`): its value, and what
/// follows the closing quote.
fn unquote(s: &str) -> Result<(String, &str), String> {
    let q = if s.starts_with('"') { '"' } else { '\'' };
    let mut out = String::new();
    let mut chars = s[1..].char_indices().map(|(i, c)| (i + 1, c));
    while let Some((i, c)) = chars.next() {
        if c == q {
            if q == '\'' && s[i + 1..].starts_with('\'') {
                chars.next();
                out.push('\'');
                continue;
            }
            return Ok((out, &s[i + 1..]));
        }
        if c != '\\' || q == '\'' {
            out.push(c);
            continue;
        }
        let Some((_, e)) = chars.next() else { break };
        out.push(match e {
            '"' | '\\' | '/' | ' ' => e,
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            'b' => '\u{8}',
            'f' => '\u{c}',
            '0' => '\0',
            'u' => {
                let hex: String = chars.by_ref().take(4).map(|(_, c)| c).collect();
                u32::from_str_radix(&hex, 16)
                    .ok()
                    .and_then(char::from_u32)
                    .ok_or_else(|| format!("bad escape `\\u{hex}` in a double-quoted value"))?
            }
            _ => return Err(format!("unknown escape `\\{e}` in a double-quoted value")),
        });
    }
    Err(format!(
        "the quoted value is not closed with {q} (a quoted value must fit on one line)"
    ))
}

/// A single value: plain (comment stripped), quoted, or a `|`/`>` block, over one or more lines.
fn scalar(source: &str, key: &str, e: &Entry) -> Result<String, String> {
    let v = e.value;
    if v.starts_with(['"', '\'']) {
        let (value, rest) = unquote(v).map_err(|why| bad(source, e.line, why))?;
        if !strip_comment(rest).is_empty() {
            return Err(bad(
                source,
                e.line,
                format!("unexpected `{}` after the closing quote", rest.trim()),
            ));
        }
        if let Some((n, l)) = e.content().next() {
            return Err(bad(
                source,
                n,
                format!("unexpected `{}` after the quoted value", l.trim()),
            ));
        }
        return Ok(value);
    }
    let head = strip_comment(v);
    if let Some(style) = head.strip_prefix(['|', '>'])
        && style.chars().all(|c| matches!(c, '-' | '+' | '1'..='9'))
    {
        return Ok(block_scalar(head.starts_with('>'), &e.block));
    }
    let first = e.content().next().map(|(_, l)| l.trim_start());
    if (head.starts_with('[') && head.ends_with(']'))
        || (head.is_empty() && first.is_some_and(|l| l == "-" || l.starts_with("- ")))
    {
        return Err(bad(
            source,
            e.line,
            format!("`{key}` takes a single value, not a list"),
        ));
    }
    // A plain value, possibly continued on indented lines (folded with spaces, as YAML does).
    let mut value = head.to_string();
    for (_, l) in e.content() {
        let l = strip_comment(l);
        if !l.is_empty() {
            if !value.is_empty() {
                value.push(' ');
            }
            value.push_str(l);
        }
    }
    Ok(value)
}

/// A `|` (literal) or `>` (folded) block scalar from the indented lines under its key.
fn block_scalar(folded: bool, block: &[(usize, &str)]) -> String {
    // Lines at column 0 in the block are comments between fields, not content.
    let lines: Vec<&str> = block
        .iter()
        .map(|(_, l)| *l)
        .filter(|l| l.trim().is_empty() || indented(l))
        .collect();
    let indent = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start_matches([' ', '\t']).len())
        .min()
        .unwrap_or(0);
    let mut out = String::new();
    for l in lines {
        let l = l.get(indent..).unwrap_or("").trim_end();
        if !folded {
            out.push_str(l);
            out.push('\n');
        } else if l.is_empty() {
            out.push('\n');
        } else {
            if !out.is_empty() && !out.ends_with('\n') {
                out.push(' ');
            }
            out.push_str(l);
        }
    }
    out
}

/// One list item: plain (comment stripped) or quoted.
fn item(s: &str) -> Result<String, String> {
    if !s.starts_with(['"', '\'']) {
        return Ok(strip_comment(s).to_string());
    }
    let (value, rest) = unquote(s)?;
    match strip_comment(rest) {
        "" => Ok(value),
        rest => Err(format!("unexpected `{rest}` after the closing quote")),
    }
}

/// A flow list `[a, "b", 'c']`.
fn flow_list(s: &str) -> Result<Vec<String>, String> {
    let mut rest = &s[1..];
    let mut items = Vec::new();
    loop {
        rest = rest.trim_start();
        let value = if rest.starts_with(['"', '\'']) {
            let (value, after) = unquote(rest)?;
            rest = after.trim_start();
            value
        } else {
            let end = rest
                .find([',', ']'])
                .ok_or("the list is not closed with `]`")?;
            let value = rest[..end].trim().to_string();
            rest = &rest[end..];
            value
        };
        if !value.is_empty() {
            items.push(value);
        }
        match rest.chars().next() {
            Some(',') => rest = &rest[1..],
            Some(']') => break,
            _ => return Err("expected `,` or `]` after a list item".into()),
        }
    }
    match strip_comment(&rest[1..]) {
        "" => Ok(items),
        after => Err(format!("unexpected `{after}` after the list")),
    }
}

/// `tools`: a comma-separated value, a flow list `[a, b]`, or `- item` lines.
fn list(source: &str, e: &Entry) -> Result<Vec<String>, String> {
    if e.value.starts_with('[') {
        // A flow list may go on over indented lines.
        let mut flow = e.value.to_string();
        for (_, l) in e.content() {
            flow.push(' ');
            flow.push_str(l.trim());
        }
        return flow_list(&flow).map_err(|why| bad(source, e.line, why));
    }
    let first = e.content().next().map(|(_, l)| l.trim_start());
    if strip_comment(e.value).is_empty() && first.is_some_and(|l| l.starts_with('-')) {
        let mut items = Vec::new();
        for (n, l) in e.content() {
            let rest = l
                .trim()
                .strip_prefix('-')
                .filter(|r| r.is_empty() || indented(r));
            let Some(rest) = rest else {
                return Err(bad(
                    source,
                    n,
                    format!("expected a `- item` line in the list, got `{}`", l.trim()),
                ));
            };
            let value = item(rest.trim()).map_err(|why| bad(source, n, why))?;
            if !value.is_empty() {
                items.push(value);
            }
        }
        return Ok(items);
    }
    Ok(scalar(source, "tools", e)?
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect())
}

/// A plain or block value without the whitespace around it; a quoted one exactly as quoted
/// (quotes are how a value keeps its spaces, which is how ccd writes such values back).
fn unpadded(value: String, e: &Entry) -> String {
    if e.value.starts_with(['"', '\'']) {
        value
    } else {
        value.trim().to_string()
    }
}

/// Parse one Claude Code subagent file.
pub fn parse_markdown(source: &str, text: &str) -> Result<AgentDef, String> {
    parse_file(source, text).map(|(def, _)| def)
}

/// Parse one subagent file: the definition, and the line of its `name`.
///
/// The front matter is the YAML that subagent files use in practice: `key: value` lines,
/// plain, `"double"` or `'single'` quoted values, `|` and `>` blocks, plain values continued
/// on indented lines, `tools` as a comma-separated value, a `[a, b]` list or `- item` lines,
/// and blank lines and `#` comments anywhere.
fn parse_file(source: &str, text: &str) -> Result<(AgentDef, usize), String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.lines().collect();
    if lines.first().map(|l| l.trim_end()) != Some("---") {
        return Err(bad(
            source,
            1,
            "missing front matter: the file must start with a `---` line",
        ));
    }
    let Some(close) = (1..lines.len()).find(|&i| lines[i].trim_end() == "---") else {
        return Err(bad(
            source,
            lines.len().max(1),
            "front matter is not closed with a `---` line",
        ));
    };
    let front: Vec<(usize, &str)> = (1..close).map(|i| (i + 1, lines[i])).collect();
    let mut entries: BTreeMap<&str, Entry> = BTreeMap::new();
    let mut i = 0;
    while let Some(&(n, line)) = front.get(i) {
        i += 1;
        if blank_or_comment(line) {
            continue;
        }
        if indented(line) {
            return Err(bad(
                source,
                n,
                format!(
                    "unexpected indented line `{}` (fields start at the beginning of a line)",
                    line.trim()
                ),
            ));
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(bad(
                source,
                n,
                format!("expected `key: value`, got `{}`", line.trim()),
            ));
        };
        let key = key.trim_end();
        if !FIELDS.contains(&key) && !is_field_name(key) {
            return Err(bad(
                source,
                n,
                format!("`{key}` is not a field name (letters, digits, `_` and `-`)"),
            ));
        }
        if entries.contains_key(key) {
            return Err(bad(source, n, format!("field `{key}` given twice")));
        }
        let value = value.trim();
        let opens_list = strip_comment(value).is_empty();
        let mut block = Vec::new();
        while let Some(&(m, next)) = front.get(i) {
            if !(blank_or_comment(next) || indented(next) || opens_list && next.starts_with('-')) {
                break;
            }
            block.push((m, next));
            i += 1;
        }
        entries.insert(
            key,
            Entry {
                line: n,
                value,
                block,
            },
        );
    }
    let required = |key: &str| -> Result<(String, usize), String> {
        let e = entries
            .get(key)
            .ok_or_else(|| bad(source, 1, format!("missing field `{key}`")))?;
        let value = unpadded(scalar(source, key, e)?, e);
        if value.trim().is_empty() {
            return Err(bad(source, e.line, format!("field `{key}` is empty")));
        }
        Ok((value, e.line))
    };
    let (name, name_line) = required("name")?;
    validate_name(&name).map_err(|e| bad(source, name_line, e))?;
    let (description, _) = required("description")?;
    let tools = match entries.get("tools") {
        Some(e) => list(source, e)?,
        None => Vec::new(),
    };
    let model = match entries.get("model") {
        Some(e) => Some(unpadded(scalar(source, "model", e)?, e)).filter(|m| !m.is_empty()),
        None => None,
    };
    // Fields ccd does not use, kept as written (the value and its continuation lines).
    let extra = entries
        .iter()
        .filter(|(key, _)| !FIELDS.contains(key))
        .map(|(key, e)| {
            let mut raw = e.value.to_string();
            for (_, line) in &e.block {
                raw.push('\n');
                raw.push_str(line);
            }
            (key.to_string(), raw.trim_end().to_string())
        })
        .collect();
    let prompt = lines[close + 1..].join("\n").trim().to_string();
    if prompt.is_empty() {
        return Err(bad(
            source,
            close + 2,
            "the prompt (after the front matter) is empty",
        ));
    }
    let def = AgentDef {
        name,
        description,
        tools,
        model,
        prompt,
        extra,
    };
    Ok((def, name_line))
}

/// `extra` fields of a bundle must read back as the same front-matter fields: a field name
/// ccd does not already own, and continuation lines that stay inside the field.
fn validate_extra(def: &AgentDef) -> Result<(), String> {
    for (key, raw) in &def.extra {
        if FIELDS.contains(&key.as_str()) || !is_field_name(key) {
            return Err(format!(
                "`extra`: `{key}` is not a field name ccd can keep (letters, digits, `_`, `-`; not name, description, tools or model)"
            ));
        }
        let opens_list = raw.lines().next().is_none_or(|l| l.trim().is_empty());
        let stays_inside = raw.lines().skip(1).all(|l| {
            l.trim_end() != "---"
                && (l.trim().is_empty() || indented(l) || opens_list && l.starts_with('-'))
        });
        if !stays_inside {
            return Err(format!(
                "`extra`: the value of `{key}` has a line that would start a field of its own"
            ));
        }
    }
    Ok(())
}

/// A front-matter key ccd keeps without using: a YAML plain key of letters, digits, `_`, `-`.
fn is_field_name(key: &str) -> bool {
    key.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
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

/// `value` as YAML: plain when it reads back as itself (here and in YAML), else double-quoted
/// (a JSON string is a YAML double-quoted scalar).
fn yaml_scalar(value: &str) -> String {
    let special = value.is_empty()
        || value != value.trim()
        || value.starts_with([
            '"', '\'', '[', ']', '{', '}', '|', '>', '#', '-', '&', '*', '!', '%', '@', '`', '?',
            ',', ':',
        ])
        || value.contains(": ")
        || value.contains(" #")
        || value.ends_with(':')
        || value.chars().any(char::is_control)
        || value.parse::<f64>().is_ok()
        || ["true", "false", "null", "yes", "no", "on", "off", "~"]
            .contains(&value.to_ascii_lowercase().as_str());
    if special {
        serde_json::Value::from(value).to_string()
    } else {
        value.to_string()
    }
}

/// The subagent file for a definition (what the VFS serves as `agents/<name>.md`).
pub fn to_markdown(def: &AgentDef) -> String {
    let mut out = format!(
        "---\nname: {}\ndescription: {}\n",
        yaml_scalar(&def.name),
        yaml_scalar(&def.description)
    );
    if !def.tools.is_empty() {
        let joined = def.tools.join(", ");
        let tools = if def
            .tools
            .iter()
            .all(|t| !t.contains(',') && yaml_scalar(t) == *t)
        {
            yaml_scalar(&joined)
        } else {
            let quoted: Vec<String> = def
                .tools
                .iter()
                .map(|t| serde_json::Value::from(t.as_str()).to_string())
                .collect();
            format!("[{}]", quoted.join(", "))
        };
        out.push_str(&format!("tools: {tools}\n"));
    }
    if let Some(m) = &def.model {
        out.push_str(&format!("model: {}\n", yaml_scalar(m)));
    }
    for (key, raw) in &def.extra {
        if raw.starts_with('\n') || raw.is_empty() {
            out.push_str(&format!("{key}:{raw}\n"));
        } else {
            out.push_str(&format!("{key}: {raw}\n"));
        }
    }
    out.push_str("---\n\n");
    out.push_str(&def.prompt);
    out.push('\n');
    out
}

/// The byte offset of each element of the `agents` array of a bundle that parsed, found by
/// letting serde_json skip over the key and each element.
fn bundle_offsets(text: &str) -> Option<Vec<usize>> {
    let b = text.as_bytes();
    let ws = |mut at: usize| {
        while b.get(at).is_some_and(u8::is_ascii_whitespace) {
            at += 1;
        }
        at
    };
    let skip_value = |at: usize| {
        let mut values = serde_json::Deserializer::from_str(text.get(at..)?)
            .into_iter::<serde::de::IgnoredAny>();
        values.next()?.ok()?;
        Some(at + values.byte_offset())
    };
    let expect = |at: usize, c: u8| (b.get(at) == Some(&c)).then_some(at + 1);
    // `{ "agents" : [`: the only key, as the bundle refuses any other.
    let mut at = expect(ws(0), b'{')?;
    at = ws(skip_value(ws(at))?);
    at = expect(ws(expect(at, b':')?), b'[')?;
    let mut offsets = Vec::new();
    loop {
        at = ws(at);
        if b.get(at) == Some(&b']') {
            return Some(offsets);
        }
        offsets.push(at);
        at = ws(skip_value(at)?);
        if let Some(next) = expect(at, b',') {
            at = next;
        }
    }
}

/// Largest file `agent.import` reads (a subagent file, or a whole JSON bundle).
const MAX_IMPORT_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Most `.md` files one directory import takes.
const MAX_IMPORT_FILES: usize = 10_000;

/// Read every definition at `path`: a directory of `.md` files, one `.md` file, or a JSON
/// bundle `{"agents": [...]}`. All or nothing; duplicate names are refused. Errors start with
/// the `file:line` of what was refused.
pub fn load(path: &Path) -> Result<Vec<Parsed>, String> {
    let mut parsed: Vec<Parsed> = Vec::new();
    let mut add = |def: AgentDef, at: String, label: &str| {
        if let Some(first) = parsed.iter().find(|p| p.def.name == def.name) {
            return Err(format!(
                "{at}: {label}duplicate agent name `{}` (first defined at {})",
                def.name, first.source
            ));
        }
        parsed.push(Parsed { def, source: at });
        Ok(())
    };
    let is_md = |p: &Path| p.extension().is_some_and(|x| x == "md");
    let files = if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_md(p))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(format!("{}: no .md files", path.display()));
        }
        if files.len() > MAX_IMPORT_FILES {
            return Err(format!(
                "{}: {} .md files; at most {MAX_IMPORT_FILES} in one import",
                path.display(),
                files.len()
            ));
        }
        files
    } else if is_md(path) {
        vec![path.to_path_buf()]
    } else {
        Vec::new()
    };
    if !files.is_empty() {
        for file in files {
            let source = file.display().to_string();
            let text = crate::files::read_regular_text(&file, MAX_IMPORT_FILE_BYTES)
                .map_err(|e| format!("{source}: {e}"))?;
            let (def, line) = parse_file(&source, &text)?;
            add(def, format!("{source}:{line}"), "")?;
        }
    } else {
        let source = path.display().to_string();
        let text = crate::files::read_regular_text(path, MAX_IMPORT_FILE_BYTES)
            .map_err(|e| format!("{source}: {e}"))?;
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Bundle {
            agents: Vec<AgentDef>,
        }
        let bundle: Bundle =
            serde_json::from_str(&text).map_err(|e| bad(&source, e.line().max(1), e))?;
        let offsets = bundle_offsets(&text).unwrap_or_default();
        for (i, def) in bundle.agents.into_iter().enumerate() {
            let line = offsets
                .get(i)
                .map_or(1, |&o| text[..o].matches('\n').count() + 1);
            let at = format!("{source}:{line}");
            let label = format!("agents[{i}]: ");
            validate_name(&def.name).map_err(|e| format!("{at}: {label}{e}"))?;
            for (field, value) in [("description", &def.description), ("prompt", &def.prompt)] {
                if value.trim().is_empty() {
                    return Err(format!("{at}: {label}`{field}` is empty"));
                }
            }
            if let Some(i) = def.tools.iter().position(|t| t.trim().is_empty()) {
                return Err(format!("{at}: {label}`tools[{i}]` is empty"));
            }
            validate_extra(&def).map_err(|e| format!("{at}: {label}{e}"))?;
            add(def, at, &label)?;
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "---\nname: reviewer\ndescription: Reviews diffs\ntools: Read, Grep\nmodel: sonnet\n---\n\nYou review code.\n";

    #[test]
    fn quoted_values_keep_their_spaces_and_round_trip() {
        let text =
            "---\nname: q1\ndescription: \"  two spaces each side  \"\nmodel: '  m  '\n---\nbody\n";
        let def = parse_markdown("q.md", text).unwrap();
        assert_eq!(def.description, "  two spaces each side  ");
        assert_eq!(def.model.as_deref(), Some("  m  "));
        // Plain values lose the space around them, as in YAML.
        let plain = parse_markdown("p.md", "---\nname: p\ndescription:   d  \n---\nb\n").unwrap();
        assert_eq!(plain.description, "d");
        // What ccd writes reads back the same, control characters and line separators included.
        for description in ["  x  ", "a\r\nb", "\u{2028}x\u{85}", "tab\tend "] {
            let def = AgentDef {
                description: description.into(),
                ..def.clone()
            };
            assert_eq!(parse_markdown("r.md", &to_markdown(&def)).unwrap(), def);
        }
    }

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
                "---\nname: x\ncolour red\n---\nhi\n",
                "a.md:3: expected `key: value`",
            ),
            (
                "---\nname: x\n9lives: red\n---\nhi\n",
                "a.md:3: `9lives` is not a field name",
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
                "---\nname: x\ndescription: d\nhi\n---\nbody\n",
                "a.md:4: expected `key: value`, got `hi`",
            ),
            ("---\nname: x\ndescription: d\n", "not closed"),
        ] {
            let err = parse_markdown("a.md", text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn accepts_the_yaml_forms_subagent_files_use() {
        let text = "\u{feff}---\r\n# A reviewer.\r\n\r\nname: reviewer  # the handle\r\ndescription: \"Use when: a diff needs review, say \\\"please\\\"\"\r\ntools:\r\n  - Read\r\n  # not Write\r\n  - 'Bash(git diff:*)'\r\n- Grep\r\nmodel: 'inherit'\r\n---\r\nReview.\r\n";
        let def = parse_markdown("a.md", text).unwrap();
        assert_eq!(def.name, "reviewer");
        assert_eq!(
            def.description,
            "Use when: a diff needs review, say \"please\""
        );
        assert_eq!(def.tools, ["Read", "Bash(git diff:*)", "Grep"]);
        assert_eq!(def.model.as_deref(), Some("inherit"));
        assert_eq!(def.prompt, "Review.");

        for (tools, want) in [
            ("tools: Read, Grep, Glob", &["Read", "Grep", "Glob"][..]),
            (
                "tools: [Read, \"Grep\", 'Glob']  # three",
                &["Read", "Grep", "Glob"],
            ),
            ("tools: [Read,\n  Grep]", &["Read", "Grep"]),
            ("tools: \"Read, Grep\"", &["Read", "Grep"]),
            ("tools:", &[]),
            ("tools: []", &[]),
        ] {
            let text = format!("---\nname: x\ndescription: d\n{tools}\n---\nhi\n");
            assert_eq!(
                parse_markdown("a.md", &text).unwrap().tools,
                want,
                "{tools}"
            );
        }
        for (description, want) in [
            ("Use when: x", "Use when: x"),
            ("'It''s # not a comment'", "It's # not a comment"),
            ("Reviews C# code # a comment", "Reviews C# code"),
            ("|\n  Line one.\n  Line two.\n", "Line one.\nLine two."),
            (
                ">-\n  Folded\n  together.\n\n  Next.",
                "Folded together.\nNext.",
            ),
            (
                "Continued\n  on the next line.",
                "Continued on the next line.",
            ),
            ("\n  Below the key.", "Below the key."),
        ] {
            let text = format!("---\nname: x\ndescription: {description}\ntools: Read\n---\nhi\n");
            let def = parse_markdown("a.md", &text).unwrap();
            assert_eq!(def.description, want, "{description}");
            assert_eq!(def.tools, ["Read"]);
        }
    }

    #[test]
    fn other_fields_are_kept_as_written() {
        let text = "---\nname: x\ndescription: d\ncolor: blue # the /agents colour\n\
                    permissionMode: acceptEdits\ndisallowedTools:\n  - Bash\n  - Write\n---\nhi\n";
        let def = parse_markdown("a.md", text).unwrap();
        assert_eq!(def.extra["color"], "blue # the /agents colour");
        assert_eq!(def.extra["permissionMode"], "acceptEdits");
        assert_eq!(def.extra["disallowedTools"], "\n  - Bash\n  - Write");
        assert_eq!(parse_markdown("a.md", &to_markdown(&def)).unwrap(), def);
        // A bundle's `extra` must read back the same: no field of its own sneaks in.
        for (key, raw) in [
            ("name", "x"),
            ("a b", "x"),
            ("color", "blue\nname: other"),
            ("color", "blue\n- item"),
            ("list", "\n  - a\n---"),
        ] {
            let mut bad = def.clone();
            bad.extra = [(key.to_string(), raw.to_string())].into();
            assert!(validate_extra(&bad).is_err(), "{key}: {raw:?}");
        }
    }

    #[test]
    fn renders_what_parses_back() {
        let def = AgentDef {
            name: "123".into(),
            description: "Use when: \"quoted\" # not a comment\nand a second line".into(),
            tools: vec!["Read".into(), "Bash(git diff:*)".into(), "a, b".into()],
            model: Some("true".into()),
            prompt: "Go.".into(),
            extra: [
                ("color".to_string(), "blue".to_string()),
                (
                    "disallowedTools".to_string(),
                    "\n  - Bash\n  - Write".to_string(),
                ),
            ]
            .into(),
        };
        assert_eq!(parse_markdown("a.md", &to_markdown(&def)).unwrap(), def);
        validate_extra(&def).unwrap();
        let md = to_markdown(&parse_markdown("a.md", GOOD).unwrap());
        assert!(md.contains("\ntools: Read, Grep\n"), "{md}");
    }

    #[test]
    fn bad_yaml_forms_name_the_file_and_line() {
        for (text, needle) in [
            (
                "---\nname: x\ndescription: \"open\n---\nhi\n",
                "a.md:3: the quoted value is not closed",
            ),
            (
                "---\nname: x\ndescription: \"a\" b\n---\nhi\n",
                "a.md:3: unexpected `b` after the closing quote",
            ),
            (
                "---\nname: x\ndescription: \"a\"\n  more\n---\nhi\n",
                "a.md:4: unexpected `more` after the quoted value",
            ),
            (
                "---\nname: x\ndescription: \"\\q\"\n---\nhi\n",
                "a.md:3: unknown escape `\\q`",
            ),
            (
                "---\nname: x\ndescription: d\ntools:\n  - Read\n  Grep\n---\nhi\n",
                "a.md:6: expected a `- item` line in the list, got `Grep`",
            ),
            (
                "---\nname: x\ndescription: d\ntools: [Read, Grep\n---\nhi\n",
                "a.md:4: the list is not closed with `]`",
            ),
            (
                "---\nname: x\ndescription: d\ntools: [Read] Grep\n---\nhi\n",
                "a.md:4: unexpected `Grep` after the list",
            ),
            (
                "---\nname: x\ndescription:\n  - a\n  - b\n---\nhi\n",
                "a.md:3: `description` takes a single value, not a list",
            ),
            (
                "---\nname: [x]\ndescription: d\n---\nhi\n",
                "a.md:2: `name` takes a single value, not a list",
            ),
            (
                "---\n  name: x\ndescription: d\n---\nhi\n",
                "a.md:2: unexpected indented line `name: x`",
            ),
            (
                "---\nname: x\ndescription: # later\n---\nhi\n",
                "a.md:3: field `description` is empty",
            ),
        ] {
            let err = parse_markdown("a.md", text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_duplicate_name_is_refused_at_its_name_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.md"), GOOD).unwrap();
        std::fs::write(
            dir.path().join("b.md"),
            "---\n# again\ndescription: d\nname: reviewer\n---\nhi\n",
        )
        .unwrap();
        let err = load(dir.path()).unwrap_err();
        let (a, b) = (dir.path().join("a.md"), dir.path().join("b.md"));
        assert_eq!(
            err,
            format!(
                "{}:4: duplicate agent name `reviewer` (first defined at {}:2)",
                b.display(),
                a.display()
            )
        );
    }

    #[test]
    fn bundle_errors_name_the_line_of_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.json");
        let at = |line: usize| format!("{}:{line}: ", path.display());
        let entry = |name: &str, description: &str| {
            format!(
                "    {{\n      \"name\": \"{name}\",\n      \"description\": \"{description}\",\n      \"prompt\": \"p\"\n    }}"
            )
        };
        // Entries start on lines 3, 8 and 13.
        let bundle =
            |entries: &[String]| format!("{{\n  \"agents\": [\n{}\n  ]\n}}\n", entries.join(",\n"));
        let good = [entry("a", "d"), entry("b", "d"), entry("c", "d")];
        std::fs::write(&path, bundle(&good)).unwrap();
        assert_eq!(
            load(&path).unwrap()[2].source,
            at(13).trim_end_matches(": ")
        );
        for (entries, want) in [
            (
                [entry("a", "d"), entry("Bad Name", "d"), entry("c", "d")],
                format!("{}agents[1]: `Bad Name` is not a valid agent name", at(8)),
            ),
            (
                [entry("a", "d"), entry("b", "d"), entry("c", " ")],
                format!("{}agents[2]: `description` is empty", at(13)),
            ),
            (
                [entry("a", "d"), entry("b", "d"), entry("a", "d")],
                format!(
                    "{}agents[2]: duplicate agent name `a` (first defined at {})",
                    at(13),
                    at(3).trim_end_matches(": ")
                ),
            ),
        ] {
            std::fs::write(&path, bundle(&entries)).unwrap();
            let err = load(&path).unwrap_err();
            assert!(err.starts_with(&want), "{err}\nwanted {want}");
        }
        // An empty tool name would vanish on the way to the agent's file.
        let empty_tool = "{\"agents\": [{\"name\": \"t\", \"description\": \"d\", \"prompt\": \"p\", \"tools\": [\"Read\", \"\"]}]}";
        std::fs::write(&path, empty_tool).unwrap();
        let err = load(&path).unwrap_err();
        assert!(err.ends_with("agents[0]: `tools[1]` is empty"), "{err}");
        // Odd spacing and escapes in the key do not throw the count off.
        std::fs::write(
            &path,
            "{\"ag\\u0065nts\"\n:\n[{\"name\": \"x\", \"description\": \"[{,\", \"prompt\": \"p\"},\n\n {\"name\": \"Y\", \"description\": \"d\", \"prompt\": \"p\"}]}",
        )
        .unwrap();
        assert!(
            load(&path)
                .unwrap_err()
                .starts_with(&format!("{}agents[1]: `Y`", at(5)))
        );
        std::fs::write(&path, "{\"agents\": [\n  {\"name\": \"x\",}\n]}").unwrap();
        assert!(load(&path).unwrap_err().starts_with(&at(2)));
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

    #[test]
    fn one_markdown_file_imports_as_one_agent() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("reviewer.md");
        std::fs::write(&file, GOOD).unwrap();
        let parsed = load(&file).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].def.name, "reviewer");
        assert!(parsed[0].source.starts_with(&file.display().to_string()));
        // A bad one is refused as subagent markdown (its line named), not as JSON.
        std::fs::write(&file, "---\nname: x\ncolour red\n---\nhi\n").unwrap();
        let err = load(&file).unwrap_err();
        assert!(
            err.contains("reviewer.md:3: expected `key: value`"),
            "{err}"
        );
    }
}
