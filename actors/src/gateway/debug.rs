//! `debug.crash`: make an actor panic inside its own handler. Bound only with fault injection
//! (`CCD_FAULT_INJECTION=1`); otherwise the method does not exist (-32601).

use actix::prelude::*;
use ccd_protocol::methods as m;
use ccd_protocol::{RpcError, types};
use serde_json::Value;

use super::context::Services;
use super::dispatch::Dispatcher;
use crate::conn::ConnCtx;
use crate::error::ActorError;
use crate::executor::Member;
use crate::supervise::{Call, Crash, Handle, Reply, ask};

pub fn register(d: &mut Dispatcher, s: &Services) {
    if s.info.fault_injection {
        d.reply::<m::DebugCrash>(crash);
    }
}

fn crash(s: &Services, p: types::CrashParams, _: &ConnCtx) -> Reply<Value> {
    async fn crash<A>(addr: Addr<A>, name: String) -> Result<Value, ActorError>
    where
        A: Handle<Crash> + actix::Handler<Call<Crash>>,
        A::Context: actix::dev::ToEnvelope<A, Call<Crash>>,
    {
        ask(&addr, name, Crash).await?;
        Ok(Value::Null)
    }
    let actor = p.actor.as_str();
    match actor {
        "gateway" => panic!("debug.crash: injected panic in gateway"),
        "writer" => Reply::later(crash(s.writer.clone(), actor.into())),
        "executor" => Reply::later(crash(s.query.pool().clone(), actor.into())),
        "limiter" => Reply::later(crash(s.query.limiter().clone(), actor.into())),
        "breaker" => Reply::later(crash(s.query.breaker().clone(), actor.into())),
        "vfs" => match &s.vfs {
            Some(addr) => Reply::later(crash(addr.clone(), actor.into())),
            None => Reply::err(unknown_actor(actor)),
        },
        "eventbus" => match &s.eventbus {
            Some(addr) => Reply::later(crash(addr.clone(), actor.into())),
            None => Reply::err(unknown_actor(actor)),
        },
        other => {
            let member = other
                .strip_prefix("executor-")
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| *n >= 1);
            match member {
                Some(n) => {
                    let pool = s.query.pool().clone();
                    let name = other.to_string();
                    Reply::later(async move {
                        let addr = ask(&pool, "executor", Member(n - 1)).await.ok().flatten();
                        let addr = addr.ok_or_else(|| unknown_actor(&name))?;
                        crash(addr, name).await
                    })
                }
                None => Reply::err(unknown_actor(other)),
            }
        }
    }
}

fn unknown_actor(name: &str) -> ActorError {
    RpcError::invalid_params(format!(
        "invalid params for debug.crash: `actor`: unknown actor `{name}` (known: gateway, writer, executor, executor-N, limiter, breaker, eventbus, vfs)"
    ))
    .into()
}
