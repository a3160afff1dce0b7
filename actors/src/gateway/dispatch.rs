//! The gateway's method table: one declaration per method binds its typed marker (from
//! [`ccd_protocol::methods`]) to its handler, as rust-analyzer's `.on::<R>(handler)` does.
//!
//! A binding does the work every method shares, once: it parses the params into the marker's
//! type (-32602 naming the parameter), runs the handler, and serializes its typed result into
//! the [`Answer`] that goes into the reply. A name without a binding is -32601. The kinds of
//! binding say how a method is served: [`Dispatcher::sync`] by the gateway at once,
//! [`Dispatcher::future`] by a read, a service or another actor, [`Dispatcher::write`] and
//! [`Dispatcher::write_checked`] as one write through the WriterActor, [`Dispatcher::cached`]
//! with an answer that never changes, and [`Dispatcher::reply`] by a handler that decides
//! itself whether it answers now or later.

use std::collections::HashMap;

use ccd_protocol::{ErrorCode, Method, RpcError, parse_params};
use serde_json::Value;
use serde_json::value::RawValue;

use super::context::Services;
use crate::blocking::off_loop;
use crate::conn::ConnCtx;
use crate::error::ActorError;
use crate::store::WriteOp;
use crate::supervise::{Reply, ask, mailbox_closed};
use crate::writer::Commit;

/// A method's result, serialized once, as the JSON text that goes into the reply.
pub type Answer = Box<RawValue>;

type Handler = Box<dyn Fn(&Services, Option<Value>, &ConnCtx) -> Reply<Answer> + Send + Sync>;

/// A handler that answers `M` at once.
type SyncHandler<M> =
    fn(&Services, <M as Method>::Params, &ConnCtx) -> Result<<M as Method>::Result, ActorError>;

/// A handler that answers `M` now or later as it sees fit.
type ReplyHandler<M> =
    fn(&Services, <M as Method>::Params, &ConnCtx) -> Reply<<M as Method>::Result>;

/// Every method the gateway serves, by name.
#[derive(Default)]
pub struct Dispatcher {
    table: HashMap<&'static str, Handler>,
}

impl Dispatcher {
    /// Serve `method`: its handler's answer, or -32601 when no method has that name.
    pub fn dispatch(
        &self,
        services: &Services,
        method: &str,
        params: Option<Value>,
        conn: &ConnCtx,
    ) -> Reply<Answer> {
        match self.table.get(method) {
            Some(handler) => handler(services, params, conn),
            None => Reply::err(RpcError::new(
                ErrorCode::MethodNotFound,
                format!("method not found: `{method}`"),
            )),
        }
    }

    /// Bind `M` to a handler of its parsed params.
    fn bind<M: Method>(
        &mut self,
        handler: impl Fn(&Services, M::Params, &ConnCtx) -> Reply<Answer> + Send + Sync + 'static,
    ) -> &mut Self {
        let bound: Handler =
            Box::new(
                move |services, params, conn| match parse_params::<M>(params) {
                    Ok(params) => handler(services, params, conn),
                    Err(e) => Reply::err(e),
                },
            );
        let before = self.table.insert(M::NAME, bound);
        assert!(before.is_none(), "{} is bound twice", M::NAME);
        self
    }

    /// `M`, answered by the gateway at once.
    pub fn sync<M: Method>(&mut self, handler: SyncHandler<M>) -> &mut Self {
        self.bind::<M>(move |services, params, conn| {
            Reply::Ready(handler(services, params, conn).and_then(to_answer))
        })
    }

    /// `M`, answered by the future its handler returns (a read, a service, another actor). The
    /// handler runs at once, on the gateway; the future runs beside it.
    pub fn future<M: Method, Fut>(
        &mut self,
        handler: impl Fn(&Services, M::Params, &ConnCtx) -> Fut + Send + Sync + 'static,
    ) -> &mut Self
    where
        Fut: Future<Output = Result<M::Result, ActorError>> + Send + 'static,
    {
        self.bind::<M>(move |services, params, conn| {
            let answer = handler(services, params, conn);
            Reply::later(async move { to_answer(answer.await?) })
        })
    }

    /// `M`, whose handler answers now or later as it sees fit.
    pub fn reply<M: Method>(&mut self, handler: ReplyHandler<M>) -> &mut Self {
        self.bind::<M>(move |services, params, conn| answer(handler(services, params, conn)))
    }

    /// `M`, whose answer never changes: serialized once, here.
    pub fn cached<M: Method>(&mut self, answer: Result<M::Result, ActorError>) -> &mut Self {
        let answer = answer.and_then(to_answer);
        self.bind::<M>(move |_, _, _| Reply::Ready(answer.clone()))
    }

    /// `M` as one write: its params turned into the write (validating them), committed by the
    /// WriterActor, its output the answer. Bad params change nothing.
    pub fn write<M: Method, O>(&mut self, op: fn(M::Params) -> Result<O, RpcError>) -> &mut Self
    where
        O: WriteOp<Output = M::Result>,
    {
        self.bind::<M>(move |services, params, _| match op(params) {
            Ok(op) => {
                let written = services.write(op);
                Reply::later(async move { to_answer(written.await?) })
            }
            Err(e) => Reply::err(e),
        })
    }

    /// As [`Self::write`], for checks that touch the file system (a path the client named,
    /// which may sit on a slow or hung mount): they run on the blocking pool, not on the event
    /// loop.
    pub fn write_checked<M: Method, O>(
        &mut self,
        op: fn(M::Params) -> Result<O, RpcError>,
    ) -> &mut Self
    where
        O: WriteOp<Output = M::Result>,
    {
        self.bind::<M>(move |services, params, _| {
            let writer = services.writer.clone();
            Reply::later(async move {
                let op = off_loop("checking the params", move || op(params)).await??;
                let out = ask(&writer, "writer", Commit(op)).await?;
                to_answer(out)
            })
        })
    }
}

/// A typed reply as the answer that goes into the reply.
fn answer<T: serde::Serialize + Send + 'static>(reply: Reply<T>) -> Reply<Answer> {
    match reply {
        Reply::Ready(r) => Reply::Ready(r.and_then(to_answer)),
        Reply::Later(fut) => Reply::later(async move { to_answer(fut.await?) }),
        Reply::Local(fut) => Reply::local(async move { to_answer(fut.await?) }),
        Reply::Deferred(slot) => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            crate::supervise::attach(&slot, tx);
            Reply::later(async move {
                to_answer(
                    rx.await
                        .unwrap_or_else(|_| Err(mailbox_closed("gateway")))?,
                )
            })
        }
    }
}

/// `v` as the JSON text of a result.
pub fn to_answer<T: serde::Serialize>(v: T) -> Result<Answer, ActorError> {
    serde_json::value::to_raw_value(&v).map_err(|e| ActorError::internal("encoding the result", e))
}
