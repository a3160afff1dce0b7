//! `limiter.*` and `breaker.*`: asked of the LimiterActor and the BreakerActor.

use ccd_protocol::methods as m;
use ccd_protocol::{RpcError, types};

use super::context::Services;
use super::dispatch::Dispatcher;
use crate::conn::ConnCtx;
use crate::error::ActorError;
use crate::resilience::{
    BreakerStatuses, Configure, LimiterActor, LimiterConfig, LimiterStatus, Reset, Scope,
};
use crate::supervise::{Reply, ask};

pub fn register(d: &mut Dispatcher) {
    d.future::<m::LimiterStatus, _>(|s, _, _| status(s.query.limiter().clone()))
        .reply::<m::LimiterConfigure>(configure)
        .future::<m::BreakerStatus, _>(|s, _, _| {
            let breaker = s.query.breaker().clone();
            async move {
                let breakers = ask(&breaker, "breaker", BreakerStatuses).await?;
                Ok(types::BreakerList { breakers })
            }
        })
        .future::<m::BreakerReset, _>(|s, p, _| {
            let breaker = s.query.breaker().clone();
            async move {
                let n = ask(&breaker, "breaker", Reset { key: p.key }).await?;
                Ok(types::BreakerResetResult { reset: n as u64 })
            }
        });
}

/// `limiter.configure`: checked here, applied by the limiter.
fn configure(s: &Services, c: types::LimiterConfigure, _: &ConnCtx) -> Reply<types::LimiterStatus> {
    // Named as the params name them (`limits.burst`), like type errors.
    if let Err(e) = c.limits.validate("limits") {
        return Reply::err(RpcError::invalid_params(format!(
            "invalid params for limiter.configure: {e}"
        )));
    }
    let limiter = s.query.limiter().clone();
    Reply::later(async move {
        ask(
            &limiter,
            "limiter",
            Configure {
                scope: c.scope,
                spec: c.limits,
            },
        )
        .await?;
        status(limiter).await
    })
}

/// The limits in force and every key's state, as `limiter.status` answers.
async fn status(limiter: actix::Addr<LimiterActor>) -> Result<types::LimiterStatus, ActorError> {
    let (limits, keys): (LimiterConfig, _) = ask(&limiter, "limiter", LimiterStatus).await?;
    let limits = types::ScopeLimits {
        global: limits.spec(Scope::Global),
        model: limits.spec(Scope::Model),
        project: limits.spec(Scope::Project),
    };
    Ok(types::LimiterStatus { limits, keys })
}
