//! `agent.*`, `orchestrator.*` and `hooks.*`: served by the
//! [`AgentService`](crate::agents::AgentService).

use ccd_protocol::methods as m;
use ccd_protocol::types;

use super::dispatch::Dispatcher;
use crate::agents::{HOOKS_FILE, RULES_FILE};

pub fn register(d: &mut Dispatcher) {
    d.future::<m::AgentImport, _>(|s, p, _| s.agents.clone().import(p.path))
        .future::<m::AgentList, _>(|s, _, _| {
            let a = s.agents.clone();
            async move {
                let agents = a
                    .all()
                    .await?
                    .into_iter()
                    .map(|d| types::AgentSummary {
                        name: d.name,
                        description: d.description,
                        tools: d.tools,
                        model: d.model,
                    })
                    .collect();
                Ok(types::AgentList {
                    agents,
                    damaged: a.damaged(),
                })
            }
        })
        .future::<m::AgentGet, _>(|s, p, _| s.agents.clone().get(p.name))
        .future::<m::AgentExposed, _>(|s, _, _| {
            let agents = s.agents.clone();
            async move {
                Ok(types::AgentsExposed {
                    agents: agents.cli_agents().await?,
                })
            }
        })
        .future::<m::AgentDelete, _>(|s, p, _| s.agents.clone().delete(p.name))
        .future::<m::OrchestratorSetRules, _>(|s, p, _| {
            let a = s.agents.clone();
            async move {
                Ok(types::Rules {
                    rules: a.set_doc(RULES_FILE, p.rules).await?,
                })
            }
        })
        .future::<m::OrchestratorGetRules, _>(|s, _, _| {
            let a = s.agents.clone();
            async move {
                Ok(types::Rules {
                    rules: a.get_doc(RULES_FILE).await?,
                })
            }
        })
        .future::<m::HooksSet, _>(|s, p, _| {
            let a = s.agents.clone();
            async move {
                Ok(types::Hooks {
                    hooks: a.set_doc(HOOKS_FILE, p.hooks).await?,
                })
            }
        })
        .future::<m::HooksGet, _>(|s, _, _| {
            let a = s.agents.clone();
            async move {
                Ok(types::Hooks {
                    hooks: a.get_doc(HOOKS_FILE).await?,
                })
            }
        });
}
