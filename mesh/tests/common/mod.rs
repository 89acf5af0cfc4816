//! Helpers shared by the core's integration tests: a node with greeted neighbours, signed
//! presence claims, bundles, and draining outputs.
#![allow(dead_code)]

use ed25519_dalek::{Signer, SigningKey};
use ferry_mesh::core::{Config, Mesh, Output};
use ferry_mesh::wire::{AckOutcome, Bundle, Claim, Hello, LinkMsg};
use ferry_proto::limits::{MAX_MESSAGE_LEN, MESH_PROTOCOL_VERSION};
use ferry_proto::transcript::presence_transcript;
use ferry_proto::types::{ChannelId, DeviceId, HybridPublicKey, IdentityKey, MessageId, NodeId};

pub(crate) const ME: NodeId = NodeId::from_array([1; 32]);
pub(crate) const EVIL: NodeId = NodeId::from_array([2; 32]);
pub(crate) const GOOD: NodeId = NodeId::from_array([3; 32]);

pub(crate) fn drain(m: &mut Mesh) -> Vec<Output> {
    std::iter::from_fn(|| m.poll_output()).collect()
}

pub(crate) fn hello(node: NodeId) -> LinkMsg {
    hello_as(node, "edge")
}

/// Hello from `node` in `role` ("edge" or "hub").
pub(crate) fn hello_as(node: NodeId, role: &str) -> LinkMsg {
    LinkMsg::Hello(Hello {
        version: MESH_PROTOCOL_VERSION,
        node_id: node,
        client_port: 0,
        client_cert_fingerprint: Vec::new(),
        max_bundle_bytes: MAX_MESSAGE_LEN as u32,
        role: role.into(),
    })
}

/// A node with `peers` linked and greeted.
pub(crate) fn node(cfg: impl FnOnce(&mut Config), peers: &[NodeId]) -> Mesh {
    let mut c = Config::new(ME);
    cfg(&mut c);
    let mut m = Mesh::new(c, 0);
    for p in peers {
        assert!(m.handle_link_up(0, *p, None));
        m.handle_message(0, *p, hello(*p));
    }
    drain(&mut m);
    m
}

pub(crate) fn user(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

pub(crate) fn id_of(k: &SigningKey) -> IdentityKey {
    IdentityKey::from_array(k.verifying_key().to_bytes())
}

pub(crate) fn hybrid() -> HybridPublicKey {
    HybridPublicKey::from_parts(&[9; 32], &[9; 1184])
}

pub(crate) fn claim(signer: &SigningKey, user: IdentityKey, node: NodeId, ts: u64) -> Claim {
    let h = hybrid();
    Claim {
        user,
        node,
        timestamp_ms: ts,
        hybrid: h.clone(),
        signature: signer
            .sign(&presence_transcript(&user, &node, ts, &h))
            .to_bytes(),
    }
}

pub(crate) fn bundle(n: u32, recipient: IdentityKey, lifetime_ms: u64, payload: usize) -> Bundle {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&n.to_be_bytes());
    Bundle {
        message_id: MessageId::from_array(id),
        recipient,
        channel: ChannelId::default(),
        device: DeviceId::DEFAULT,
        lifetime_ms,
        hop_count: 0,
        hop_limit: 16,
        sender: None,
        payload: vec![7; payload],
    }
}

/// Acks the core sent to `to`, in order.
pub(crate) fn acks_to(outs: &[Output], to: NodeId) -> Vec<AckOutcome> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Send {
                to: t,
                msg: LinkMsg::Ack(a),
            } if *t == to => Some(a.iter().map(|(_, o)| *o).collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Runs the core until its housekeeping has flushed what it queued.
pub(crate) fn settle(m: &mut Mesh, now: &mut u64) -> Vec<Output> {
    let mut outs = drain(m);
    for _ in 0..4 {
        *now += 300;
        m.handle_timeout(*now);
        outs.extend(drain(m));
    }
    outs
}
