//! The connection a request came from, as the methods that serve it see it: its outbound
//! queue (for notifications), whether it closed, and its live event subscriptions. The socket
//! side ([`crate::server`]) and the HTTP API ([`crate::http`]) build one per connection.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// The connection a request came from: lets a method stream notifications back on it and
/// notice when the client goes away. Shared by the connection's requests (cloning it is one
/// reference count).
#[derive(Clone, Debug)]
pub struct ConnCtx(Arc<ConnInfo>);

#[derive(Debug)]
pub struct ConnInfo {
    pub id: u64,
    pub outbound: crate::outbound::Outbound,
    /// Cancelled when the client disconnects.
    pub closed: CancellationToken,
    /// Cancelled when the daemon closes the connection (stop, idle eviction): no new requests
    /// are read, and event subscriptions end; requests in flight still finish.
    pub closing: CancellationToken,
    /// Live event subscriptions of this connection (a connection with one is never idle).
    pub subscriptions: Arc<std::sync::atomic::AtomicUsize>,
}

impl ConnCtx {
    pub fn new(info: ConnInfo) -> Self {
        ConnCtx(Arc::new(info))
    }
}

impl std::ops::Deref for ConnCtx {
    type Target = ConnInfo;
    fn deref(&self) -> &ConnInfo {
        &self.0
    }
}
