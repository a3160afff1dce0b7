//! `vfs.*`: the agent filesystem's state, and unsealing its files through the VfsActor.

use ccd_protocol::RpcError;
use ccd_protocol::methods as m;
use ccd_protocol::types::{self, ActorState};
use serde_json::Value;

use super::context::Services;
use super::dispatch::Dispatcher;
use crate::conn::ConnCtx;
use crate::error::ActorError;
use crate::supervise::{Reply, ask};

pub fn register(d: &mut Dispatcher) {
    d.sync::<m::VfsStatus>(|s, _, _| Ok(s.vfs_status()))
        .reply::<m::VfsUnseal>(unseal);
}

fn unseal(s: &Services, p: types::VfsUnseal, _: &ConnCtx) -> Reply<Value> {
    if !std::path::Path::new(&p.file).is_absolute() {
        return Reply::err(RpcError::invalid_params(format!(
            "invalid params for vfs.unseal: `file`: must be absolute, got `{}`",
            p.file
        )));
    }
    let Some(vfs) = s.vfs.clone() else {
        return Reply::err(ActorError::Unavailable {
            actor: "vfs".into(),
            state: ActorState::Failed,
            reason: "the agent filesystem is not running".into(),
        });
    };
    Reply::later(async move {
        ask(
            &vfs,
            "vfs",
            crate::vfs::Unseal {
                path: p.file.into(),
            },
        )
        .await
    })
}
