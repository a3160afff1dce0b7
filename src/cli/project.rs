//! `ccd project add|set|list|rm`: named working directories for agent runs.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;
use ccd_actors::store;
use ccd_protocol::methods as m;
use ccd_protocol::types::{self};
use clap::Subcommand;

use super::args::{ListArgs, parse_env};
use crate::exit::{self, UsageError};
use crate::home::{Home, read};
use crate::table::{Table, print_json};

#[derive(Debug, Subcommand)]
pub enum ProjectCmd {
    /// Register a project: NAME for the directory PATH (which must exist).
    Add {
        /// The project's name: 1 to 64 ASCII letters, digits, `.`, `_` and `-`, not starting
        /// with `.` or `-`.
        name: String,
        /// Its working directory (must exist; a relative path is resolved here).
        path: PathBuf,
        /// An environment variable for agent runs in this project (repeatable).
        #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
        env: Vec<(String, String)>,
        /// Print the project as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change a project: its directory, its environment, its name.
    #[command(
        after_help = "Examples:\n  ccd project set web --path ~/src/web2\n  ccd project set web --env ANTHROPIC_MODEL=sonnet --unset-env DEBUG\n  ccd project set web --rename site"
    )]
    Set {
        /// The project's name.
        #[arg(add = crate::complete::projects())]
        name: String,
        /// Its new working directory (must exist; a relative path is resolved here).
        #[arg(long, value_name = "DIR")]
        path: Option<PathBuf>,
        /// Set an environment variable for its agent runs (repeatable); others stay.
        #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
        env: Vec<(String, String)>,
        /// Remove an environment variable (repeatable).
        #[arg(long = "unset-env", value_name = "KEY")]
        unset_env: Vec<String>,
        /// Its new name.
        #[arg(long, value_name = "NEW")]
        rename: Option<String>,
        /// Print the project as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List projects (reads the database directly).
    List(ListArgs),
    /// Remove a project.
    Rm {
        /// The project's name.
        #[arg(add = crate::complete::projects())]
        name: String,
    },
}

pub fn run(home: &Home, autostart: bool, cmd: ProjectCmd) -> anyhow::Result<u8> {
    match cmd {
        ProjectCmd::Add {
            name,
            path,
            env,
            json,
        } => {
            let path = std::path::absolute(&path)
                .with_context(|| format!("resolving {}", path.display()))?;
            let params = types::ProjectCreate {
                name,
                path: path.to_string_lossy().into_owned(),
                env: (!env.is_empty()).then(|| env.into_iter().collect()),
            };
            let p = crate::daemon::connect_or_start(home, autostart)?
                .call::<m::ProjectCreate>(&params)?;
            if json {
                print_json(&p)?;
            } else {
                outln!("added project {} ({})", p.name, p.path);
            }
        }
        ProjectCmd::Set {
            name,
            path,
            env,
            unset_env,
            rename,
            json,
        } => {
            if path.is_none() && env.is_empty() && unset_env.is_empty() && rename.is_none() {
                return Err(UsageError(
                    "nothing to change: give --path, --env, --unset-env or --rename".into(),
                )
                .into());
            }
            let path = match path {
                Some(p) => Some(
                    std::path::absolute(&p)
                        .with_context(|| format!("resolving {}", p.display()))?
                        .to_string_lossy()
                        .into_owned(),
                ),
                None => None,
            };
            let mut client = crate::daemon::connect_or_start(home, autostart)?;
            // The environment is replaced whole: start from the project's own.
            let env = if env.is_empty() && unset_env.is_empty() {
                None
            } else {
                let lookup = name.clone();
                let current = read(home, move |c| store::project(c, &lookup))?
                    .ok_or_else(|| anyhow::anyhow!("no project named `{name}`"))?;
                let mut merged = current.env;
                for key in &unset_env {
                    merged.remove(key);
                }
                merged.extend(env);
                Some(merged)
            };
            let params = types::ProjectUpdate {
                name,
                path,
                new_name: rename,
                env,
            };
            let p = client.call::<m::ProjectUpdate>(&params)?;
            if json {
                print_json(&p)?;
            } else {
                outln!("updated project {} ({})", p.name, p.path);
            }
        }
        ProjectCmd::List(args) => {
            let projects = read(home, store::projects)?;
            if args.json {
                print_json(&projects)?;
            } else {
                let mut t = Table::new(["NAME", "PATH", "CREATED"]);
                for p in projects {
                    t.row([p.name, p.path, p.created_at]);
                }
                t.print_or_empty(&mut std::io::stdout().lock(), "no projects")?;
            }
        }
        ProjectCmd::Rm { name } => {
            let p = crate::daemon::connect_or_start(home, autostart)?
                .call::<m::ProjectDelete>(&types::ProjectName { name })?;
            outln!("removed project {}", p.name);
        }
    }
    Ok(exit::OK)
}
