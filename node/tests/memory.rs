//! What one hostile request costs the node in memory, measured by counting the heap: the test
//! binary's allocator records the peak bytes allocated while a request is served (node and
//! client run in this process). Each attack must cost about its own size, not a multiple of it.
//! The tests of this file take turns (one lock), so one's allocations never show in another's.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use ferry_client::Identity;
use ferry_proto::frame::encode_request;
use ferry_proto::qpq::v1 as pb;
use ferry_proto::{Method, Status};
use prost::Message;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

#[allow(unsafe_code)]
// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller promised for `layout`.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as the caller promised.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let grow = new_size - layout.size();
                let now = CURRENT.fetch_add(grow, Ordering::Relaxed) + grow;
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MIB: usize = 1024 * 1024;

/// Runs `f` and returns how far the heap grew above where it stood at the start, at its peak.
async fn peak_growth<F: std::future::Future>(f: F) -> (F::Output, usize) {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f.await;
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

/// Sends raw request bytes on a new stream and returns the status and error message.
async fn raw(c: &ferry_client::Client, frame: &[u8]) -> (Status, String) {
    let (mut send, mut recv) = c.connection().open_bi().await.unwrap();
    send.write_all(frame).await.unwrap();
    let _ = send.finish();
    let mut hdr = [0u8; 9];
    recv.read_exact(&mut hdr).await.unwrap();
    let h = ferry_proto::frame::ResponseHeader::from_bytes(&hdr);
    let mut body = vec![0u8; h.payload_len().unwrap()];
    recv.read_exact(&mut body).await.unwrap();
    let msg = pb::Error::decode(&body[..])
        .map(|e| e.message)
        .unwrap_or_default();
    (h.status().unwrap(), msg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_enqueue_costs_about_its_own_size() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let n = start().await;
    let (c, _) = n.user().await;
    // One 1 MiB payload for 256 recipients: a 1 MiB request that would store 256 MiB.
    let recipients: Vec<Vec<u8>> = (0..256u16)
        .map(|i| {
            let mut k = [0u8; 32];
            k[..2].copy_from_slice(&i.to_be_bytes());
            k.to_vec()
        })
        .collect();
    let req = pb::BatchEnqueueRequest {
        recipient_keys: recipients,
        payload: vec![7; MIB],
        ..Default::default()
    };
    let frame = encode_request(Method::BatchEnqueue.id(), 1, &req.encode_to_vec()).unwrap();
    drop(req);
    let ((st, msg), grew) = peak_growth(raw(&c, &frame)).await;
    assert_eq!(st, Status::PayloadTooLarge, "{msg}");
    assert!(msg.contains("send fewer recipients"), "{msg}");
    // The frame as received and decoded, and QUIC's buffers: a few MiB, not 256.
    assert!(grew < 16 * MIB, "the heap grew by {} MiB", grew / MIB);
    assert_eq!(c.health().await.unwrap().queue_depth, 0, "nothing stored");
    // Within the limit, a fan-out is stored for everyone.
    let bob = Identity::generate().unwrap();
    let carol = Identity::generate().unwrap();
    let r: pb::BatchEnqueueResponse = c
        .call(
            Method::BatchEnqueue,
            &pb::BatchEnqueueRequest {
                recipient_keys: vec![
                    bob.public_key().as_bytes().to_vec(),
                    carol.public_key().as_bytes().to_vec(),
                ],
                payload: vec![1; 2 * MIB - 64],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.seqs, [1, 1]);
    n.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_fields_are_counted_before_they_are_decoded() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let n = start().await;
    let (c, _) = n.user().await;
    // 2,097,150 empty entries, each two bytes on the wire: a frame just under 4 MiB.
    let entries = 2_097_150;
    let mut body = Vec::with_capacity(entries * 2);
    for _ in 0..entries {
        body.extend_from_slice(&[0x0a, 0x00]);
    }
    for method in [
        Method::EnqueueMany,
        Method::BatchEnqueue,
        Method::FetchHybridKeys,
    ] {
        let frame = encode_request(method.id(), 1, &body).unwrap();
        let ((st, msg), grew) = peak_growth(raw(&c, &frame)).await;
        assert_eq!(st, Status::BadRequest, "{method}: {msg}");
        assert!(
            msg.contains(&format!("has {entries} entries, at most 256")),
            "{method}: {msg}"
        );
        assert!(
            grew < 16 * MIB,
            "{method}: the heap grew by {} MiB",
            grew / MIB
        );
    }
    assert_eq!(c.health().await.unwrap().status, "ok");
    n.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_a_client_never_reads_cost_its_share_and_its_connection() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let n = start_with(|c| c.answer_timeout = std::time::Duration::from_secs(2)).await;
    let (c, me) = n.user().await;
    // A 3.8 MiB message to itself, then 32 Peeks of it whose answers it never reads: its QUIC
    // stack stops granting flow-control credit once its buffers are full.
    c.enqueue(&enqueue_req(&me, &vec![3; 3_800_000], None))
        .await
        .unwrap();
    let peek = pb::PeekRequest {
        recipient_key: me.public_key().as_bytes().to_vec(),
        limit: 1,
        ..Default::default()
    };
    let frame = encode_request(Method::Peek.id(), 1, &peek.encode_to_vec()).unwrap();
    let (streams, grew) = peak_growth(async {
        let mut streams = Vec::new();
        for _ in 0..32 {
            let (mut s, r) = c.connection().open_bi().await.unwrap();
            s.write_all(&frame).await.unwrap();
            let _ = s.finish();
            streams.push((s, r));
        }
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        streams
    })
    .await;
    // One answer held (the address's share of the answer pool is one largest answer), and
    // what QUIC buffered on both sides: not 32 answers.
    assert!(grew < 24 * MIB, "the heap grew by {} MiB", grew / MIB);
    // The client does not read: its connection is closed, and the answers are let go.
    let reason = tokio::time::timeout(std::time::Duration::from_secs(10), c.connection().closed())
        .await
        .expect("closed");
    assert!(
        reason.to_string().contains("answers not read for 2 s"),
        "{reason}"
    );
    drop(streams);
    // Others read big answers all along.
    let (d, you) = n.user().await;
    d.enqueue(&enqueue_req(&you, &vec![4; 3_800_000], None))
        .await
        .unwrap();
    assert_eq!(
        d.peek(&mailbox(&you), 1).await.unwrap()[0].data.len(),
        3_800_000
    );
    n.node.stop().await;
}
