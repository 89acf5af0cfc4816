//! Coalesced sending: concurrent Enqueues from one application become few EnqueueMany (812)
//! requests, each one stream and one durable commit on the node.
//!
//! On a connection with no EnqueueMany outstanding, a message goes out at once, with whatever
//! else is queued: a lone message costs what a plain Enqueue costs. While requests are
//! outstanding, queued messages wait until there are `max_messages / in_flight` of them or
//! every outstanding request has been answered (Nagle's rule, applied to requests), so a busy
//! connection sends fuller batches instead of a trickle of small ones. No message waits
//! longer than the requests already outstanding when it was queued.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ferry_proto::Status;
use ferry_proto::limits::MAX_ENQUEUE_MANY;
use ferry_proto::qpq::v1 as pb;
use prost::Message;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

use crate::{Client, ClientError};

/// Request bytes one batch carries at most (a single larger message goes alone).
const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// How a [`Batcher`] groups messages.
#[derive(Clone, Copy, Debug)]
pub struct BatchOptions {
    /// Messages per EnqueueMany at most (1..=256).
    pub max_messages: usize,
    /// EnqueueMany requests outstanding at once.
    pub in_flight: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            max_messages: 64,
            in_flight: 4,
        }
    }
}

type Answer = oneshot::Sender<Result<pb::EnqueueResponse, ClientError>>;

struct Job {
    req: pb::EnqueueRequest,
    answer: Answer,
}

/// Sends Enqueues over one connection, several per request when several are waiting.
///
/// Each [`Batcher::enqueue`] returns that message's own answer, after the node stored it
/// durably, exactly like [`Client::enqueue`]. Messages without a `message_id` get a random
/// one first, so that a batch the node refused can be retried message by message without
/// storing anything twice. Against a server without EnqueueMany (other qpq servers, older
/// Ferry nodes) it sends one Enqueue per message. Needs a tokio runtime; the background task
/// ends when the last clone is dropped.
///
/// The queue holds only what callers are waiting on, so it is as deep as their concurrency. A
/// caller that stops waiting (a timeout, say) does not take its message back: once queued it
/// is sent, and may be stored. Give each message a `message_id` of your own to retry it
/// without storing it twice. Messages sent concurrently may be stored in any order, as with
/// concurrent Enqueues; one caller's messages awaited one after the other keep their order.
#[derive(Clone, Debug)]
pub struct Batcher {
    tx: mpsc::UnboundedSender<Job>,
}

impl Batcher {
    /// Starts batching over `client`.
    pub fn new(client: Arc<Client>, opts: BatchOptions) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let max = opts.max_messages.clamp(1, MAX_ENQUEUE_MANY);
        tokio::spawn(run(client, rx, max, opts.in_flight.max(1)));
        Self { tx }
    }

    /// Enqueue (200) through the batcher: resolves when the node answered for this message.
    pub async fn enqueue(
        &self,
        mut req: pb::EnqueueRequest,
    ) -> Result<pb::EnqueueResponse, ClientError> {
        if req.message_id.is_empty() {
            req.message_id = crate::new_message_id()?.as_bytes().to_vec();
        }
        let (answer, rx) = oneshot::channel();
        self.tx
            .send(Job { req, answer })
            .map_err(|_| ClientError::Stream("the batcher has stopped".into()))?;
        rx.await
            .map_err(|_| ClientError::Stream("the batcher has stopped".into()))?
    }
}

async fn run(
    client: Arc<Client>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    max: usize,
    in_flight: usize,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    let done = Arc::new(Notify::new());
    let plain = Arc::new(AtomicBool::new(false));
    // While requests are outstanding, a batch waits for this many messages or for all of them
    // to be answered (Nagle's rule, per request); on an idle connection it goes at once.
    let fill = (max / in_flight).max(1);
    let mut pending: VecDeque<Job> = VecDeque::new();
    let mut open = true;
    loop {
        if pending.is_empty() {
            if !open {
                return;
            }
            match rx.recv().await {
                Some(j) => pending.push_back(j),
                None => return,
            }
        }
        while let Ok(j) = rx.try_recv() {
            pending.push_back(j);
        }
        let busy = in_flight - slots.available_permits();
        if open && busy > 0 && pending.len() < fill {
            tokio::select! {
                j = rx.recv() => match j {
                    Some(j) => pending.push_back(j),
                    None => open = false,
                },
                () = done.notified() => {}
            }
            continue;
        }
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        while let Ok(j) = rx.try_recv() {
            pending.push_back(j);
        }
        let mut bytes = 0;
        let mut batch = Vec::with_capacity(pending.len().min(max));
        while batch.len() < max {
            let Some(len) = pending.front().map(|j| j.req.encoded_len()) else {
                break;
            };
            if !batch.is_empty() && bytes + len > MAX_BATCH_BYTES {
                break;
            }
            bytes += len;
            if let Some(j) = pending.pop_front() {
                batch.push(j);
            }
        }
        let client = Arc::clone(&client);
        let plain = Arc::clone(&plain);
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            send(&client, batch, &plain).await;
            drop(slot);
            done.notify_one();
        });
    }
}

async fn send(client: &Arc<Client>, batch: Vec<Job>, plain: &AtomicBool) {
    if batch.len() == 1 || plain.load(Ordering::Relaxed) {
        return one_by_one(client, batch).await;
    }
    let (reqs, answers): (Vec<_>, Vec<_>) = batch.into_iter().map(|j| (j.req, j.answer)).unzip();
    let req = pb::EnqueueManyRequest { messages: reqs };
    match client.enqueue_many(&req).await {
        Ok(resp) if resp.results.len() == answers.len() => {
            for (answer, r) in answers.into_iter().zip(resp.results) {
                let _ = answer.send(Ok(r));
            }
        }
        Ok(resp) => {
            let n = (resp.results.len(), answers.len());
            for answer in answers {
                let _ = answer.send(Err(ClientError::Stream(format!(
                    "EnqueueMany answered {} results for {} messages",
                    n.0, n.1
                ))));
            }
        }
        // The server does not have EnqueueMany: plain Enqueues from now on.
        Err(e) if matches!(e.status_code(), Some(Status::UnknownMethod)) => {
            plain.store(true, Ordering::Relaxed);
            retry_alone(client, req.messages, answers).await;
        }
        Err(e)
            if matches!(
                e.status_code(),
                Some(Status::BadRequest | Status::PayloadTooLarge)
            ) =>
        {
            // A refused batch stored nothing (or, with a storage error midway, only messages
            // whose ids it carries): each message is retried alone and gets its own answer.
            retry_alone(client, req.messages, answers).await;
        }
        Err(e) => {
            for answer in answers {
                let _ = answer.send(Err(share(&e)));
            }
        }
    }
}

async fn retry_alone(client: &Arc<Client>, reqs: Vec<pb::EnqueueRequest>, answers: Vec<Answer>) {
    let jobs = reqs
        .into_iter()
        .zip(answers)
        .map(|(req, answer)| Job { req, answer })
        .collect();
    one_by_one(client, jobs).await;
}

/// Plain Enqueues, all outstanding at once.
async fn one_by_one(client: &Arc<Client>, mut jobs: Vec<Job>) {
    if jobs.len() == 1
        && let Some(j) = jobs.pop()
    {
        let r = client.enqueue(&j.req).await;
        let _ = j.answer.send(r);
        return;
    }
    let mut calls = tokio::task::JoinSet::new();
    for j in jobs {
        let client = Arc::clone(client);
        calls.spawn(async move {
            let r = client.enqueue(&j.req).await;
            let _ = j.answer.send(r);
        });
    }
    while calls.join_next().await.is_some() {}
}

/// The same error for each message of a failed batch.
fn share(e: &ClientError) -> ClientError {
    match e {
        ClientError::Status {
            method,
            status,
            message,
            retry_after_ms,
        } => ClientError::Status {
            method: method.clone(),
            status: *status,
            message: message.clone(),
            retry_after_ms: *retry_after_ms,
        },
        ClientError::Connection(c) => ClientError::Connection(c.clone()),
        other => ClientError::Stream(other.to_string()),
    }
}
