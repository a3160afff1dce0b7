//! What the integration tests share, apart from the tests themselves.
//!
//! - `daemon`: the harness: `Daemon` (started on a temporary `CCD_HOME`; its `Drop` stops the
//!   daemon, or kills it), `Conn` (raw NDJSON), hermetic commands and `describe` for failures.
//! - `stub_agents`: shell scripts standing in for the Claude Code CLI.
//! - `mock_api`: a mock Anthropic Messages API on 127.0.0.1 that the real CLI talks to.
//! - `claude`: the pinned Claude Code CLI: where it is, and running it alone against the mock.
//! - `agent_daemon`: a daemon whose agent is the real CLI pointed at the mock.

pub mod agent_daemon;
pub mod claude;
pub mod daemon;
pub mod mock_api;
pub mod stub_agents;
