//! Handing a connection to pingora's HTTP proxy (`proxy.rs`) for every
//! request the read path does not take, with the bytes already read, and
//! taking it back afterwards.
//!
//! A file of its own because it is the one place the read path relies on
//! pingora's session internals (pipelined bytes carried between sessions,
//! read from the settings' `Debug` form on the pinned pingora version): a
//! pingora upgrade is checked here.

use bytes::BytesMut;
use pingora::apps::HttpServerApp;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

use super::ReadPath;

impl ReadPath {
    /// Gives the connection to pingora's proxy, with every byte already
    /// read from the client (the request and whatever was pipelined after
    /// it), for as long as pingora holds bytes of a next request; returns
    /// the connection when pingora keeps it alive and has read nothing
    /// past its last request.
    ///
    /// pingora reads the rest of the body from the socket itself, and the
    /// same read may bring the next pipelined request (`abcde` and a whole
    /// snapshot request in one segment). With pipelining on, pingora keeps
    /// those bytes for the next session instead of failing with "Sent data
    /// after end of body"; they are then fed to a next pingora session, so
    /// requests are answered in the order they came.
    pub(super) async fn hand_over(
        &self,
        client: Stream,
        pending: &mut Vec<u8>,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut session = ServerSession::new_http1(client);
        session.set_pipelining_enabled(true);
        if !pending.is_empty() {
            session.set_pipelined_prefix(BytesMut::from(&pending[..]));
            pending.clear();
        }
        session.set_keepalive((!*shutdown.borrow()).then_some(self.client_idle.as_secs().max(1)));
        loop {
            let (stream, settings) = self.general.process_new_http(session, shutdown).await?.consume();
            match settings {
                Some(settings) if holds_pipelined_bytes(&settings) => {
                    session = ServerSession::new_http1(stream);
                    settings.apply_to_session(&mut session);
                }
                _ => return Some(stream),
            }
        }
    }
}

/// Whether pingora kept bytes of a next pipelined request for the next
/// session. pingora 0.9.1 offers no getter for them, only
/// `apply_to_session`, so this reads the settings' `Debug` form (pinned
/// version; if the form changed this would say "no", the behaviour before
/// pipelining was handled).
fn holds_pipelined_bytes(settings: &pingora::apps::HttpPersistentSettings) -> bool {
    format!("{settings:?}").contains("pipelined_prefix: Some(")
}
