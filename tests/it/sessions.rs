//! Sessions with the real Claude Code CLI against the mock Messages API: one query at a time per
//! session, a deleted project, listing, filters, paging, close, cleanup and expiry.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::agent_daemon::*;
use crate::support::daemon::*;
use crate::support::mock_api::Behaviour;

#[test]
fn a_session_whose_project_was_deleted_says_so() {
    let d = agent_daemon(Behaviour::Text("ok".into()), "");
    let _dir = d.project();
    let s = d
        .call("session.create", json!({"project": "proj"}))
        .unwrap();
    d.call("project.delete", json!({"name": "proj"})).unwrap();
    let e = d
        .call("query.run", json!({"prompt": "x", "session": s["id"]}))
        .unwrap_err();
    assert_eq!(code(&e), -32004, "{e}");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains(s["id"].as_str().unwrap()) && msg.contains("no longer exists"),
        "{msg}"
    );
    assert!(d.mock.requests().is_empty());
}

#[test]
fn a_session_runs_one_query_at_a_time() {
    let d = agent_daemon(Behaviour::Hang, "");
    let s = d.call("session.create", json!({})).unwrap();
    let mut c = d.connect();
    let id = c.request(
        "query.run",
        json!({"prompt": "x", "session": s["id"], "stream": true}),
    );
    let first = c.recv().unwrap();
    let query_id = first["params"]["query_id"].clone();
    assert!(d.mock.wait_for_requests(1, Duration::from_secs(30)));
    // A second query in the same session would resume the same conversation at once.
    let e = d
        .call("query.run", json!({"prompt": "y", "session": s["id"]}))
        .unwrap_err();
    assert_eq!(code(&e), -32005, "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("already has a query running"),
        "{e}"
    );
    d.call("query.cancel", json!({"query_id": query_id}))
        .unwrap();
    assert_eq!(code(&c.reply_to(id)["error"]), -32008);
    // A session the query made itself is claimed too, as soon as anyone can learn its id.
    let mut c3 = d.connect();
    let id3 = c3.request("query.run", json!({"prompt": "w", "stream": true}));
    let first = c3.recv().unwrap();
    let sessions = d.call("session.list", json!({})).unwrap();
    let made = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].clone())
        .find(|id| *id != s["id"])
        .unwrap_or_else(|| panic!("no session made by the query: {sessions}"));
    let e = d
        .call("query.run", json!({"prompt": "v", "session": made}))
        .unwrap_err();
    assert_eq!(code(&e), -32005, "{e}");
    d.call(
        "query.cancel",
        json!({"query_id": first["params"]["query_id"]}),
    )
    .unwrap();
    assert_eq!(code(&c3.reply_to(id3)["error"]), -32008);
    // Once it has ended, the session takes a query again.
    let mut c2 = d.connect();
    c2.request(
        "query.run",
        json!({"prompt": "z", "session": s["id"], "stream": true}),
    );
    assert_eq!(c2.recv().unwrap()["method"], "query.event");
}

#[test]
fn sessions_list_filter_close_cleanup_and_expire() {
    let d = agent_daemon(
        Behaviour::Text("ok".into()),
        "[session]\nttl_s = 1\nsweep_interval_s = 1\n",
    );
    let _dir = d.project();
    let a = d
        .call(
            "session.create",
            json!({"project": "proj", "tags": ["red"]}),
        )
        .unwrap();
    let b = d.call("session.create", json!({"tags": ["blue"]})).unwrap();
    assert_eq!(a["id"].as_str().unwrap().len(), 36);
    let ids = |params: Value| -> HashSet<String> {
        d.call("session.list", params).unwrap()["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids(json!({"tag": "red"})),
        HashSet::from([a["id"].as_str().unwrap().to_string()])
    );
    assert_eq!(ids(json!({"project": "proj"})).len(), 1);
    assert_eq!(
        code(
            &d.call("session.create", json!({"project": "nope"}))
                .unwrap_err()
        ),
        -32004
    );
    assert_eq!(
        code(
            &d.call("session.list", json!({"status": "weird"}))
                .unwrap_err()
        ),
        -32602
    );

    d.call("session.close", json!({"id": b["id"]})).unwrap();
    // The TTL sweep expires the idle open one.
    wait_until(
        "the idle session to expire",
        Duration::from_secs(30),
        || d.call("session.get", json!({"id": a["id"]})).unwrap()["session"]["status"] == "expired",
    );
    let r = d
        .call("session.cleanup", json!({"older_than_s": 0}))
        .unwrap();
    assert_eq!(r["removed"], 2);
    assert_eq!(
        code(&d.call("session.get", json!({"id": a["id"]})).unwrap_err()),
        -32004
    );
}

#[test]
fn session_list_pages_newest_first() {
    let d = Daemon::start();
    let made: Vec<String> = (0..5)
        .map(|_| {
            let s = d.call("session.create", json!({})).unwrap();
            s["id"].as_str().unwrap().to_string()
        })
        .collect();
    let page = |limit: u32, offset: u64| {
        let r = d
            .call("session.list", json!({"limit": limit, "offset": offset}))
            .unwrap();
        let ids: Vec<String> = r["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        (ids, r["more"].as_bool().unwrap())
    };
    let (all, more) = page(1000, 0);
    assert_eq!(all.len(), 5);
    assert!(!more);
    assert_eq!(
        all.iter().collect::<HashSet<_>>(),
        made.iter().collect::<HashSet<_>>()
    );
    // Pages of two follow the same order, and say when more follow.
    let mut paged = Vec::new();
    for (offset, want_more) in [(0, true), (2, true), (4, false)] {
        let (ids, more) = page(2, offset);
        assert_eq!(more, want_more, "page at {offset}");
        paged.extend(ids);
    }
    assert_eq!(paged, all);
    assert_eq!(page(2, 5), (vec![], false));
    for bad in [
        json!({"limit": 0}),
        json!({"limit": 100_001}),
        json!({"offset": -1}),
    ] {
        let e = d.call("session.list", bad.clone()).unwrap_err();
        assert_eq!(code(&e), -32602, "{bad}: {e}");
    }
}
