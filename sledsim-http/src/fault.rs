//! A sim-only control for fault injection over the wire: a client call made
//! inside `refused_by_server` carries a header asking the server to refuse it,
//! and the server answers 503 without applying it, so the refusal travels as a
//! real one does and the caller decodes it from the response.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use dropshot::ErrorStatusCode;

use crate::ApiError;

/// The header a client sends to have the server refuse the request.
pub const REFUSE_HEADER: &str = "x-sledsim-refuse";

/// What a refused call's 503 says; an in-process refusal says the same, so a
/// run reads alike over either transport.
pub const REFUSAL_MESSAGE: &str = "refused, as the request asked (fault injection)";

/// Refusals the servers of this process have answered, for tests to see that a
/// refusal went over the wire.
static REFUSALS: AtomicUsize = AtomicUsize::new(0);

/// How many refusals this process's servers have answered so far.
pub fn refusals_served() -> usize {
    REFUSALS.load(Ordering::SeqCst)
}

thread_local! {
    /// Set while a `RefusedByServer` future is polled.
    static REFUSING: Cell<bool> = const { Cell::new(false) };
}

/// `f`, with every request it sends asking to be refused (503).
pub fn refused_by_server<F: Future>(f: F) -> RefusedByServer<F> {
    RefusedByServer { inner: Box::pin(f) }
}

/// See `refused_by_server`.
pub struct RefusedByServer<F> {
    inner: Pin<Box<F>>,
}

impl<F: Future> Future for RefusedByServer<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        /// Puts the flag back however the poll ends, a panic included, so a
        /// thread that outlives the panic sends no stray refusals.
        struct Restore(bool);
        impl Drop for Restore {
            fn drop(&mut self) {
                REFUSING.with(|r| r.set(self.0));
            }
        }
        let _restore = Restore(REFUSING.with(|r| r.replace(true)));
        self.inner.as_mut().poll(cx)
    }
}

/// Whether the request being built should ask to be refused.
pub(crate) fn refusing() -> bool {
    REFUSING.with(Cell::get)
}

/// The server's side: `Err(503)` if the request asked to be refused, before the
/// handler applies anything.
pub fn refuse_if_asked(request: &dropshot::RequestInfo) -> Result<(), ApiError> {
    if request.headers().contains_key(REFUSE_HEADER) {
        REFUSALS.fetch_add(1, Ordering::SeqCst);
        return Err(ApiError::new(
            ErrorStatusCode::SERVICE_UNAVAILABLE,
            Some("ServiceUnavailable"),
            REFUSAL_MESSAGE.into(),
        ));
    }
    Ok(())
}
