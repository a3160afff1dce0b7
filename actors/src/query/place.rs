//! Where and how a query's agent runs: its directory (project, cwd, session, default), its
//! environment, its program, and the checks of what becomes its arguments.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ccd_protocol::types::{QueryRun, Session};

use super::{QueryService, invalid};
use crate::blocking::off_loop;
use crate::error::ActorError;
use crate::{store, validate};

/// Linux's limit on one argument to a program (MAX_ARG_STRLEN, 32 pages), less its NUL.
const MAX_ARG_BYTES: usize = 128 * 1024 - 1;
/// What all of a query's own options may add to the agent's arguments, well inside the
/// kernel's limit for arguments and environment together (a quarter of the 8 MiB stack).
const MAX_ARGS_BYTES: usize = 1024 * 1024;

impl QueryService {
    /// Where the agent runs, with which environment and program: refused here, before
    /// anything runs or counts against a breaker, when that place is gone.
    pub(super) async fn place_agent(
        &self,
        p: &QueryRun,
        existing: Option<&Session>,
    ) -> Result<AgentPlace, ActorError> {
        let mut placement = self.place(p, existing).await?;
        let (env_remove, env) = self.agent_env(p.env.as_ref(), std::mem::take(&mut placement.env));
        let program = {
            let probe = self.agent.clone();
            off_loop("resolving the agent command", move || {
                crate::executor::agent_program(&probe)
            })
            .await?
        };
        Ok(AgentPlace {
            placement,
            env_remove,
            env,
            program,
        })
    }

    /// A project by name, or by the path of its directory (any path that resolves to it).
    pub(super) async fn find_project(
        &self,
        name: &str,
    ) -> Result<ccd_protocol::types::Project, ActorError> {
        let lookup = name.to_string();
        let found = self
            .reader
            .read("reading the project", move |c| {
                if let Some(p) = store::project(c, &lookup)? {
                    return Ok(Some(p));
                }
                if !lookup.starts_with('/') {
                    return Ok(None);
                }
                let Ok(canonical) = std::fs::canonicalize(&lookup) else {
                    return Ok(None);
                };
                let canonical = canonical.to_string_lossy();
                Ok(store::projects(c)?
                    .into_iter()
                    .find(|p| p.path == canonical))
            })
            .await?;
        found.ok_or_else(|| ActorError::NotFound(format!("no project named `{name}`")))
    }

    /// Where a query runs. In order: the caller's `project`, the caller's `cwd`, the
    /// session's own directory (Claude Code finds a conversation only in the directory it was
    /// started in), the session's project, the daemon's default. A place that is gone is the
    /// caller's error, named with what to do: nothing has run, and no breaker counts it.
    async fn place(
        &self,
        p: &QueryRun,
        existing: Option<&Session>,
    ) -> Result<Placement, ActorError> {
        if let Some(name) = &p.project {
            let project = self.find_project(name).await?;
            let what = format!("project `{}`", project.name);
            let fix = format!(
                "point it at a directory that exists with `ccd project set {0} --path DIR`, or \
                 remove it with `ccd project rm {0}`",
                project.name
            );
            return Ok(Placement {
                cwd: existing_dir(&project.path, &what, &fix).await?,
                env: project.env,
                project: Some(project.name),
            });
        }
        if let Some(dir) = &p.cwd {
            return Ok(Placement {
                cwd: PathBuf::from(checked_dir("cwd", dir.clone()).await?),
                env: BTreeMap::new(),
                project: None,
            });
        }
        let Some(s) = existing else {
            return Ok(Placement {
                cwd: self.default_cwd.clone(),
                env: BTreeMap::new(),
                project: None,
            });
        };
        let project = match &s.project {
            Some(name) => {
                let lookup = name.clone();
                let found = self
                    .reader
                    .read("reading the project", move |c| store::project(c, &lookup))
                    .await?;
                Some(found.ok_or_else(|| {
                    ActorError::NotFound(format!(
                        "session `{}` was started in project `{name}`, which no longer exists; \
                         give `project` or `cwd`, or start a new session",
                        s.id
                    ))
                })?)
            }
            None => None,
        };
        let dir = s
            .cwd
            .clone()
            .or_else(|| project.as_ref().map(|p| p.path.clone()))
            .unwrap_or_else(|| self.default_cwd.to_string_lossy().into_owned());
        let what = format!("session `{}`", s.id);
        let fix = "its conversation is kept by Claude Code per directory: restore the directory, \
                   or give `cwd`/`project` to run elsewhere (the agent then starts without the \
                   earlier turns), or start a new session";
        let (env, project) = match project {
            Some(p) => (p.env, Some(p.name)),
            None => (BTreeMap::new(), None),
        };
        Ok(Placement {
            cwd: existing_dir(&dir, &what, fix).await?,
            env,
            project,
        })
    }

    /// The agent's environment for a query: what to take out of the daemon's and what to set.
    /// With the caller's environment, every variable `executor.pass_env` names comes from it
    /// (or is not set, when the caller has none); a project's `env` applies on top.
    fn agent_env(
        &self,
        caller: Option<&BTreeMap<String, String>>,
        project_env: BTreeMap<String, String>,
    ) -> (Vec<String>, BTreeMap<String, String>) {
        let Some(caller) = caller else {
            return (Vec::new(), project_env);
        };
        let remove = std::env::vars_os()
            .filter_map(|(name, _)| name.into_string().ok())
            .filter(|name| self.cfg.passes_env(name))
            .collect();
        let mut env: BTreeMap<String, String> = caller
            .iter()
            .filter(|(name, _)| self.cfg.passes_env(name))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.extend(project_env);
        (remove, env)
    }
}

/// Where a query runs: its directory, its project's `env`, its project.
pub(super) struct Placement {
    pub(super) cwd: PathBuf,
    pub(super) env: BTreeMap<String, String>,
    pub(super) project: Option<String>,
}

/// Where the agent runs, with which environment and program.
pub(super) struct AgentPlace {
    pub(super) placement: Placement,
    pub(super) env_remove: Vec<String>,
    pub(super) env: BTreeMap<String, String>,
    pub(super) program: PathBuf,
}

/// A client's directory parameter, checked and made canonical (off the event loop: it may be
/// on a slow mount).
pub(super) async fn checked_dir(param: &'static str, dir: String) -> Result<String, ActorError> {
    off_loop("checking a directory", move || validate::dir(param, &dir))
        .await?
        .map_err(ActorError::Rpc)
}

/// `dir` if it is a directory; else a not-found error that names `what` it belongs to and the
/// `fix`.
async fn existing_dir(dir: &str, what: &str, fix: &str) -> Result<PathBuf, ActorError> {
    let path = PathBuf::from(dir);
    let probe = path.clone();
    let is_dir = off_loop("checking a directory", move || probe.is_dir()).await?;
    if is_dir {
        Ok(path)
    } else {
        Err(ActorError::NotFound(format!(
            "{what} runs in {dir}, which does not exist (or is not a directory); {fix}"
        )))
    }
}

/// Check options that become the agent's arguments, each `(name, flag, values, joined)`: a
/// value per argument, or (`joined`, the tool lists) all values in one, separated by commas;
/// each argument is `flag=value`. No value may be empty (nor, in a list, any entry): the flag
/// would then mean something else or nothing. No program can be given a NUL byte, and Linux
/// takes at most 128 KiB in one argument (and about 2 MiB in all): past that the agent could
/// not even be started, and finding out at spawn would fail the query as if the agent were
/// missing. A value that starts with `-` is fine: it is part of its `flag=value` argument.
pub(super) fn agent_args_fit(
    method: &str,
    args: &[(&str, &str, &[String], bool)],
) -> Result<(), ActorError> {
    for (name, _, values, joined) in args {
        if values.iter().any(String::is_empty) {
            let what = if *joined || values.len() > 1 || *name == "add_dirs" {
                "an entry must not be empty"
            } else {
                "must not be empty"
            };
            return Err(invalid(method, &format!("`{name}`: {what}")));
        }
        if values.iter().any(|v| v.contains('\0')) {
            return Err(invalid(
                method,
                &format!(
                    "`{name}`: must not contain a NUL byte (it becomes an argument of the agent)"
                ),
            ));
        }
    }
    // The length of each option's longest argument, and of all its arguments.
    let mut total = 0;
    for (name, flag, values, joined) in args {
        let all: usize = values.iter().map(String::len).sum();
        let longest = if *joined {
            all + values.len().saturating_sub(1)
        } else {
            values.iter().map(String::len).max().unwrap_or(0)
        };
        // The argument is `flag=value`.
        let room = MAX_ARG_BYTES - flag.len() - 1;
        if longest > room {
            return Err(invalid(
                method,
                &format!(
                    "`{name}`: {longest} bytes; the agent takes at most {MAX_ARG_BYTES} bytes in \
                     one argument, {room} of them for this value after `{flag}=`"
                ),
            ));
        }
        total += if *joined { longest } else { all };
    }
    if total > MAX_ARGS_BYTES {
        return Err(invalid(
            method,
            &format!(
                "the options that become the agent's arguments add up to {total} bytes; at most \
                 {MAX_ARGS_BYTES}"
            ),
        ));
    }
    Ok(())
}
