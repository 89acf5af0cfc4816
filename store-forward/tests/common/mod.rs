//! Helpers shared by the store's integration tests.
#![allow(dead_code, unreachable_pub)]

use ferry_proto::types::{ChannelId, DeviceId, IdentityKey, MailboxAddr, MessageId};
use ferry_store::NewMessage;

pub const T0: u64 = 1_700_000_000_000;
pub const HOUR: u64 = 3_600_000;

pub fn user(n: u8) -> IdentityKey {
    IdentityKey::from_array([n; 32])
}

pub fn mailbox(n: u8) -> MailboxAddr {
    MailboxAddr::default_for(user(n))
}

pub fn mailbox_on(n: u8, channel: u8, device: &[u8]) -> MailboxAddr {
    MailboxAddr {
        recipient: user(n),
        channel: ChannelId::from_array([channel; 16]),
        device: DeviceId::from_field(device, "device").unwrap(),
    }
}

pub fn mid(n: u64) -> MessageId {
    let mut b = [0u8; 16];
    b[8..].copy_from_slice(&n.to_be_bytes());
    MessageId::from_array(b)
}

pub fn msg(to: MailboxAddr, id: u64, payload: &[u8], now: u64, ttl_ms: u64) -> NewMessage {
    NewMessage {
        mailbox: to,
        message_id: mid(id),
        sender: Some(user(200)),
        payload: payload.to_vec(),
        enqueued_at_ms: now,
        expires_at_ms: now + ttl_ms,
    }
}
