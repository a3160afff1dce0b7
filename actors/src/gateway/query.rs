//! `query.*` and `session.*`: served by the [`QueryService`](crate::query::QueryService).

use ccd_protocol::methods as m;

use super::dispatch::Dispatcher;

pub fn register(d: &mut Dispatcher) {
    d.future::<m::QueryRun, _>(|s, p, conn| s.query.clone().run(p, conn.clone()))
        .sync::<m::QueryCancel>(|s, p, _| s.query.cancel(&p.query_id))
        .sync::<m::QueryList>(|s, _, _| Ok(s.query.list()))
        .future::<m::SessionDelete, _>(|s, p, _| s.query.clone().delete_session(p.id))
        .future::<m::SessionCreate, _>(|s, p, _| s.query.clone().create_session(p))
        .future::<m::SessionGet, _>(|s, p, _| s.query.clone().get_session(p.id))
        .future::<m::SessionList, _>(|s, p, _| s.query.clone().list_sessions(p))
        .future::<m::SessionClose, _>(|s, p, _| s.query.clone().close_session(p.id))
        .future::<m::SessionCleanup, _>(|s, p, _| s.query.clone().cleanup_sessions(p.older_than_s));
}
