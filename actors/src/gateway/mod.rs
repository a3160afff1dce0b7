//! The GatewayActor: turns a JSON-RPC method call into typed actor messages.
//!
//! The socket side ([`crate::server`]) frames and parses lines and sends each request here as a
//! [`Route`]. The gateway looks the method up in its [`Dispatcher`], where each method of
//! [`ccd_protocol::methods`] is bound once to its handler: the binding parses the params into
//! the method's type (-32602 naming the parameter), runs the handler and serializes its result;
//! a name without a binding is -32601. The handlers live in a module per namespace and either
//! answer themselves (`system.*`) or hand the work to whoever owns it: writes go to the
//! WriterActor, reads straight to SQLite via [`crate::reader::Reader`], the rest to a service
//! (queries, agents, backups) or another actor (limiter, breaker, agent filesystem).
//!
//! Adding a method: declare it in `protocol/src/methods.rs` with its types, bind it in its
//! namespace's module here, and document it in docs/protocol.md.

mod agents;
mod backup;
mod context;
mod debug;
mod dispatch;
mod events;
mod project;
mod query;
mod resilience;
mod system;
mod vfs;

use std::sync::Arc;

use actix::prelude::*;

pub use context::DaemonInfo;
pub use dispatch::Answer;
pub use events::REPLAY_MAX;

use context::Services;
use dispatch::Dispatcher;

use crate::agents::AgentService;
use crate::backup::BackupService;
use crate::conn::ConnCtx;
use crate::error::ActorError;
use crate::executor::SharedProbe;
use crate::query::QueryService;
use crate::reader::Reader;
use crate::supervise::{
    ActorRequest, Call, Handle, Pending, Reply, Supervise, Supervision, mailbox_closed, supervised,
};
use crate::writer::WriterActor;

/// One JSON-RPC call to route.
pub struct Route {
    pub method: String,
    pub params: Option<serde_json::Value>,
    pub conn: ConnCtx,
}

impl ActorRequest for Route {
    type Output = Routed;
}

/// The gateway's answer to a [`Route`]: ready, or still to come from the actor that owns the
/// work. The caller awaits a pending answer itself, so that no task is spawned per request.
pub enum Routed {
    Ready(Answer),
    Pending(Pending<Answer>),
}

/// Send one call through the gateway and wait for its answer, as a client's request.
///
/// The call is queued at once. Made of combinators, which hold each step's state only while it
/// runs: this future is part of every request's.
pub fn route(
    gateway: &Addr<GatewayActor>,
    route: Route,
) -> impl Future<Output = Result<Answer, ActorError>> + use<> {
    use futures_util::FutureExt as _;
    use futures_util::future::{Either, ready};
    gateway.send(Call(route)).then(|sent| match sent {
        Ok(Ok(Routed::Ready(v))) => Either::Left(ready(Ok(v))),
        Ok(Ok(Routed::Pending(fut))) => Either::Right(
            std::panic::AssertUnwindSafe(fut)
                .catch_unwind()
                .map(|answer| {
                    answer.unwrap_or_else(|payload| {
                        let message = crate::supervise::panic_message(payload.as_ref());
                        tracing::error!("answering a request panicked: {message}");
                        Err(ActorError::Internal(format!(
                            "answering this request panicked: {message}"
                        )))
                    })
                }),
        ),
        Ok(Err(e)) => Either::Left(ready(Err(e))),
        Err(_) => Either::Left(ready(Err(mailbox_closed("gateway")))),
    })
}

pub struct GatewayActor {
    sup: Supervision,
    services: Services,
    methods: Dispatcher,
}

supervised!(GatewayActor);

impl GatewayActor {
    pub fn new(
        sup: Supervision,
        writer: Addr<WriterActor>,
        reader: Reader,
        query: QueryService,
        agent: SharedProbe,
        info: Arc<DaemonInfo>,
        agents: AgentService,
    ) -> Self {
        let services = Services {
            backup: BackupService::new(info.home.clone(), writer.clone()),
            health: sup.registry().clone(),
            writer,
            reader,
            query,
            agents,
            agent,
            info,
            vfs: None,
            eventbus: None,
        };
        let mut methods = Dispatcher::default();
        system::register(&mut methods, &services);
        debug::register(&mut methods, &services);
        project::register(&mut methods);
        backup::register(&mut methods);
        query::register(&mut methods);
        resilience::register(&mut methods);
        events::register(&mut methods);
        agents::register(&mut methods);
        vfs::register(&mut methods);
        GatewayActor {
            sup,
            services,
            methods,
        }
    }

    /// Serve `vfs.unseal` (and `debug.crash vfs`) through the VfsActor.
    pub fn with_vfs(mut self, addr: Addr<crate::vfs::VfsActor>) -> Self {
        self.services.vfs = Some(addr);
        self
    }

    /// Let `debug.crash` reach the event bus actor.
    pub fn with_eventbus(mut self, addr: Addr<crate::eventbus::EventBusActor>) -> Self {
        self.services.eventbus = Some(addr);
        self
    }
}

impl Supervise for GatewayActor {
    fn supervision(&self) -> &Supervision {
        &self.sup
    }
}

impl Handle<Route> for GatewayActor {
    fn handle(&mut self, call: Route, _: &mut Context<Self>) -> Reply<Routed> {
        let Route {
            method,
            params,
            conn,
        } = call;
        match self
            .methods
            .dispatch(&self.services, &method, params, &conn)
        {
            Reply::Ready(r) => Reply::Ready(r.map(Routed::Ready)),
            Reply::Later(fut) => Reply::ok(Routed::Pending(fut)),
            Reply::Local(fut) => Reply::local(async move { fut.await.map(Routed::Ready) }),
            Reply::Deferred(slot) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                crate::supervise::attach(&slot, tx);
                Reply::ok(Routed::Pending(Box::pin(async move {
                    rx.await.unwrap_or_else(|_| Err(mailbox_closed("gateway")))
                })))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Instant, SystemTime};

    use ccd_protocol::RpcError;
    use ccd_protocol::methods as m;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::supervise::HealthRegistry;

    /// Every method of the protocol is routed: with bad params it answers -32602, never -32601.
    #[actix_rt::test]
    async fn every_registered_method_is_routed() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, db) = crate::writer::start_for_test(dir.path());
        let health = HealthRegistry::new(Default::default());
        let info = Arc::new(DaemonInfo {
            pid: 1,
            version: "test",
            started_at: SystemTime::now(),
            started: Instant::now(),
            fault_injection: true,
            home: dir.path().to_path_buf(),
            shutdown: CancellationToken::new(),
            subscriber_queue: 16,
            http: Default::default(),
            vfs: Default::default(),
            config: Vec::new(),
        });
        let pool =
            crate::executor::ExecutorPool::new(&health, 1, 1, std::time::Duration::from_secs(1));
        let pool = Supervisor::start(move |_| pool);
        let reader = Reader::new(db);
        let core = crate::resilience::limiter::LimiterCore::new();
        let limits: crate::resilience::SharedLimits = Default::default();
        let limiter = crate::resilience::LimiterActor::new(
            health.register("limiter"),
            core.clone(),
            limits.clone(),
        );
        let breaker_core = crate::resilience::breaker::BreakerCore::new();
        let bus = crate::eventbus::Bus::new();
        let breaker = crate::resilience::BreakerActor::new(
            health.register("breaker"),
            breaker_core,
            Default::default(),
            bus.clone(),
        );
        let resilience = crate::query::Resilience {
            limiter: Supervisor::start(move |_| limiter),
            limiter_core: core,
            breaker: Supervisor::start(move |_| breaker),
            retry: Default::default(),
        };
        let probe = Arc::new(std::sync::Mutex::new(crate::executor::AgentProbe::default()));
        let agents = crate::agents::AgentService::new(
            writer.clone(),
            reader.clone(),
            Arc::new(crate::seal::MasterKey::generate()),
        );
        let query = QueryService::new(
            writer.clone(),
            reader.clone(),
            pool,
            resilience,
            bus,
            crate::query::AgentSetup {
                cfg: Default::default(),
                probe: probe.clone(),
                default_cwd: dir.path().into(),
                definitions: agents.clone(),
            },
        );
        let gw = GatewayActor::new(
            health.register("gateway"),
            writer,
            reader,
            query,
            probe,
            info,
            agents,
        );
        let gw = Supervisor::start(move |_| gw);
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let conn = ConnCtx::new(crate::conn::ConnInfo {
            id: 0,
            outbound: crate::outbound::Outbound::new(tx),
            closed: CancellationToken::new(),
            closing: CancellationToken::new(),
            subscriptions: Default::default(),
        });
        for name in m::ALL_METHODS {
            let params = Some(serde_json::json!({ "definitely_not_a_param": 1 }));
            let route = Route {
                method: name.to_string(),
                params,
                conn: conn.clone(),
            };
            let err = super::route(&gw, route).await.expect_err(name);
            assert_eq!(RpcError::from(err).code, -32602, "{name}");
        }
        let route = Route {
            method: "nope.nope".into(),
            params: None,
            conn,
        };
        let err = super::route(&gw, route).await.unwrap_err();
        assert_eq!(RpcError::from(err).code, -32601);
    }
}
