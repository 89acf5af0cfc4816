use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::StoreError;
use crate::store::Outcome;

/// The result of a write, available once its group commit finished.
///
/// Wait for it with [`Pending::wait`] on a thread, or `.await` it in async code; the store
/// itself needs no runtime.
#[must_use = "a write is only known to be durable once its Pending resolves"]
#[derive(Debug)]
pub struct Pending<T> {
    rx: oneshot::Receiver<Result<Outcome, StoreError>>,
    map: fn(Outcome) -> Result<T, StoreError>,
}

impl<T> Pending<T> {
    pub(crate) fn new(
        rx: oneshot::Receiver<Result<Outcome, StoreError>>,
        map: fn(Outcome) -> Result<T, StoreError>,
    ) -> Self {
        Self { rx, map }
    }

    /// Blocks until the operation committed or failed.
    pub fn wait(self) -> Result<T, StoreError> {
        match self.rx.recv() {
            Ok(r) => r.and_then(self.map),
            Err(_) => Err(StoreError::Closed),
        }
    }
}

impl<T> Future for Pending<T> {
    type Output = Result<T, StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match Pin::new(&mut this.rx).poll(cx) {
            Poll::Ready(Ok(r)) => Poll::Ready(r.and_then(this.map)),
            Poll::Ready(Err(_)) => Poll::Ready(Err(StoreError::Closed)),
            Poll::Pending => Poll::Pending,
        }
    }
}
