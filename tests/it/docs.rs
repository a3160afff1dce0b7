//! docs/protocol.md is checked against `system.describe`, so the two cannot drift; and
//! `rpc.discover` is a well-formed OpenRPC document describing the same methods.

use std::collections::BTreeSet;

use serde_json::json;

use crate::support::daemon::*;

fn protocol_md() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md");
    std::fs::read_to_string(path).expect("docs/protocol.md")
}

/// Method names documented as `### \`name\`` headings.
fn documented_methods(doc: &str) -> BTreeSet<String> {
    doc.lines()
        .filter_map(|l| l.strip_prefix("### `"))
        .filter_map(|l| l.split('`').next())
        .map(String::from)
        .collect()
}

#[test]
fn protocol_md_documents_exactly_the_described_methods_and_codes() {
    let d = Daemon::builder().fault_injection().start();
    let describe = d.call("system.describe", json!({})).unwrap();
    let doc = protocol_md();

    let described: BTreeSet<String> = describe["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        documented_methods(&doc),
        described,
        "docs/protocol.md and system.describe disagree on the methods"
    );

    // Every param of every method is named in its section.
    for m in describe["methods"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        let start = doc.find(&format!("### `{name}`")).unwrap();
        let section = &doc[start + 4..];
        let section = &section[..section.find("\n### ").unwrap_or(section.len())];
        for p in m["params"].as_array().unwrap() {
            let param = format!("`{}`", p["name"].as_str().unwrap());
            assert!(
                section.contains(&param),
                "docs/protocol.md: {name} does not document param {param}"
            );
        }
    }

    for e in describe["error_codes"].as_array().unwrap() {
        let row = format!("| {} |", e["code"]);
        assert!(
            doc.contains(&row),
            "docs/protocol.md lacks the error code row {row}"
        );
    }
}

#[test]
fn describe_has_types_required_flags_and_hints() {
    let d = Daemon::start();
    let describe = d.call("system.describe", json!({})).unwrap();
    let methods = describe["methods"].as_array().unwrap();
    assert!(
        methods.iter().all(|m| m["namespace"] != "debug"),
        "debug.* only with fault injection"
    );
    let create = methods
        .iter()
        .find(|m| m["name"] == "project.create")
        .unwrap();
    let path = named(&create["params"], "path");
    assert_eq!(path["type"], "string");
    assert_eq!(path["required"], true);
    assert_eq!(path["hint"], "path");
    assert_eq!(create["params_schema"]["additionalProperties"], false);
}

#[test]
fn rpc_discover_is_an_openrpc_document_of_the_same_methods() {
    let d = Daemon::start();
    let doc = d.call("rpc.discover", json!({})).unwrap();
    let version = doc["openrpc"].as_str().unwrap();
    assert!(version.starts_with("1."), "{version}");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let describe = d.call("system.describe", json!({})).unwrap();
    let a: BTreeSet<&str> = doc["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    let b: BTreeSet<&str> = describe["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(a, b);
    for m in doc["methods"].as_array().unwrap() {
        assert!(m["params"].is_array(), "{m}");
        assert!(
            m["result"]["name"].is_string() && m["result"]["schema"].is_object(),
            "{m}"
        );
        for p in m["params"].as_array().unwrap() {
            assert!(p["name"].is_string() && p["schema"].is_object(), "{p}");
        }
    }
}
