//! Re-homing an accepted client socket onto the runtime of the worker
//! thread that serves it (see `rehome`). Its own file because it is the
//! read path's one `unsafe` and one piece of pingora-internals knowledge.

use pingora::protocols::Stream;
use tokio::net::TcpStream;

/// Registers a fresh client connection with this thread's runtime.
///
/// pingora accepts on one worker's runtime and hands the connection to a
/// random one (`pingora_runtime::current_handle`). The socket stays
/// registered with the accepting runtime's reactor, so for about half the
/// connections every readiness event is a wake-up sent across threads
/// (measured: 0.6 eventfd writes per request). A duplicate of the socket,
/// registered here, replaces pingora's stream; if anything in that fails
/// the original is kept.
pub(super) fn rehome(client: Stream) -> Stream {
    use std::os::fd::BorrowedFd;
    // SAFETY: `client` owns this descriptor and stays alive until the
    // duplicate exists; the borrow ends before `client` is dropped.
    let fd = unsafe { BorrowedFd::borrow_raw(client.id()) };
    let Ok(owned) = fd.try_clone_to_owned() else {
        return client;
    };
    let std_stream = std::net::TcpStream::from(owned);
    if std_stream.peer_addr().is_err() || std_stream.set_nonblocking(true).is_err() {
        return client;
    }
    match TcpStream::from_std(std_stream) {
        Ok(local) => Box::new(pingora::protocols::l4::stream::Stream::from(local)),
        Err(_) => client,
    }
}
