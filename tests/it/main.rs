//! Integration tests: each starts the real `ccd` binary on a temporary `CCD_HOME` and talks to
//! it over its Unix socket or through the CLI, as a user's scripts would.
//!
//! One test binary (faster to link), one module per area; what they share (the daemon harness,
//! stub agents, the mock Messages API, the pinned Claude Code CLI) is in `support/`:
//!
//! | module        | what it covers                                                        |
//! |---------------|-----------------------------------------------------------------------|
//! | `lifecycle`   | start, double start, stale pid/socket, stop, status codes, logs       |
//! | `limits`      | what one client may cost the others: open files, reply memory         |
//! | `protocol`    | every error code, batches, notifications, pipelining, limits, bad input |
//! | `writes`      | concurrent writers, group commit isolation, backups, direct reads     |
//! | `supervision` | panics injected into each actor, restart intensity, kill -9 recovery  |
//! | `vfs`         | the agent filesystem mounted with FUSE, unsealing, launch            |
//! | `agent_defs`  | agent definitions: import, sealing at rest, wrong key                |
//! | `cli`         | the CLI's commands, output and exit codes                             |
//! | `docs`        | docs/protocol.md against `system.describe`; OpenRPC                   |
//! | `bench`       | `ccd-bench` smoke runs: every comparison runs, no request fails         |
//! | `claude_cli`  | the real Claude Code CLI through the daemon, against the mock API      |
//! | `sessions`    | sessions with the real CLI: one query at a time, listing, paging, expiry |
//! | `batch`       | `ccd batch`: JSONL output and its safety rules, resume, tags, Ctrl-C   |
//! | `agent_process` | stub agents: arguments, environment, output, stderr, lingering children |
//! | `events`      | the event bus: a query's events, filters, lagged subscribers, retention |
//! | `http`        | the HTTP API: health, Prometheus metrics, stats, SSE events, token   |
//! | `resilience`  | breaker, retries with backoff, rate limits, permits across restarts   |
//! | `service`     | `daemon install/uninstall`: the systemd user unit, the no-systemd fallback |
//! | `shell`       | `ccd init` in bash, zsh and fish: `ccd cd PROJECT`, completions      |
//! | `mock_api`    | the mock Messages API's own checks, then the CLI alone against it      |
//! | `tui`         | `ccd tui` in tmux: panels, live events, daemon down and back, keys    |
//! | `workflow`    | the daily query workflow through the CLI with the real Claude Code CLI |

mod support;

mod agent_defs;
mod agent_process;
mod batch;
mod bench;
mod claude_cli;
mod cli;
mod docs;
mod events;
mod http;
mod lifecycle;
mod limits;
mod mock_api;
mod protocol;
mod resilience;
mod service;
mod sessions;
mod shell;
mod supervision;
mod tui;
mod vfs;
mod workflow;
mod writes;
