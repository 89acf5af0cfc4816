//! Method ids (u16) of qpq v2, the documented table of 49 plus Ferry's 104-107 and 810-812, and the push
//! event types 1000-1003. Ids are stable and never reused.
//!
//! A node implements a subset; any other id, listed here or not, is answered with
//! `UnknownMethod` on the same stream.

/// Method id constants in qpq's SCREAMING_CASE, as in `quicproquo_proto::method_ids`.
pub mod ids {
    /// `OpaqueRegisterStart` (100).
    pub const OPAQUE_REGISTER_START: u16 = 100;
    /// `OpaqueRegisterFinish` (101).
    pub const OPAQUE_REGISTER_FINISH: u16 = 101;
    /// `OpaqueLoginStart` (102).
    pub const OPAQUE_LOGIN_START: u16 = 102;
    /// `OpaqueLoginFinish` (103).
    pub const OPAQUE_LOGIN_FINISH: u16 = 103;
    /// `AuthChallenge` (104).
    pub const AUTH_CHALLENGE: u16 = 104;
    /// `AuthResponse` (105).
    pub const AUTH_RESPONSE: u16 = 105;
    /// `ResumeSession` (106).
    pub const RESUME_SESSION: u16 = 106;
    /// `Attach` (107). Ferry.
    pub const ATTACH: u16 = 107;
    /// `Enqueue` (200).
    pub const ENQUEUE: u16 = 200;
    /// `Fetch` (201).
    pub const FETCH: u16 = 201;
    /// `FetchWait` (202).
    pub const FETCH_WAIT: u16 = 202;
    /// `Peek` (203).
    pub const PEEK: u16 = 203;
    /// `Ack` (204).
    pub const ACK: u16 = 204;
    /// `BatchEnqueue` (205).
    pub const BATCH_ENQUEUE: u16 = 205;
    /// `UploadKeyPackage` (300).
    pub const UPLOAD_KEY_PACKAGE: u16 = 300;
    /// `FetchKeyPackage` (301).
    pub const FETCH_KEY_PACKAGE: u16 = 301;
    /// `UploadHybridKey` (302).
    pub const UPLOAD_HYBRID_KEY: u16 = 302;
    /// `FetchHybridKey` (303).
    pub const FETCH_HYBRID_KEY: u16 = 303;
    /// `FetchHybridKeys` (304).
    pub const FETCH_HYBRID_KEYS: u16 = 304;
    /// `CreateChannel` (400).
    pub const CREATE_CHANNEL: u16 = 400;
    /// `RemoveMember` (410).
    pub const REMOVE_MEMBER: u16 = 410;
    /// `UpdateGroupMetadata` (411).
    pub const UPDATE_GROUP_METADATA: u16 = 411;
    /// `ListGroupMembers` (412).
    pub const LIST_GROUP_MEMBERS: u16 = 412;
    /// `RotateKeys` (413).
    pub const ROTATE_KEYS: u16 = 413;
    /// `ReportMessage` (420).
    pub const REPORT_MESSAGE: u16 = 420;
    /// `BanUser` (421).
    pub const BAN_USER: u16 = 421;
    /// `UnbanUser` (422).
    pub const UNBAN_USER: u16 = 422;
    /// `ListReports` (423).
    pub const LIST_REPORTS: u16 = 423;
    /// `ListBanned` (424).
    pub const LIST_BANNED: u16 = 424;
    /// `ResolveUser` (500).
    pub const RESOLVE_USER: u16 = 500;
    /// `ResolveIdentity` (501).
    pub const RESOLVE_IDENTITY: u16 = 501;
    /// `RevokeKey` (510).
    pub const REVOKE_KEY: u16 = 510;
    /// `CheckRevocation` (511).
    pub const CHECK_REVOCATION: u16 = 511;
    /// `AuditKeyTransparency` (520).
    pub const AUDIT_KEY_TRANSPARENCY: u16 = 520;
    /// `UploadBlob` (600).
    pub const UPLOAD_BLOB: u16 = 600;
    /// `DownloadBlob` (601).
    pub const DOWNLOAD_BLOB: u16 = 601;
    /// `RegisterDevice` (700).
    pub const REGISTER_DEVICE: u16 = 700;
    /// `ListDevices` (701).
    pub const LIST_DEVICES: u16 = 701;
    /// `RevokeDevice` (702).
    pub const REVOKE_DEVICE: u16 = 702;
    /// `RegisterPushToken` (710).
    pub const REGISTER_PUSH_TOKEN: u16 = 710;
    /// `StoreRecoveryBundle` (750).
    pub const STORE_RECOVERY_BUNDLE: u16 = 750;
    /// `FetchRecoveryBundle` (751).
    pub const FETCH_RECOVERY_BUNDLE: u16 = 751;
    /// `DeleteRecoveryBundle` (752).
    pub const DELETE_RECOVERY_BUNDLE: u16 = 752;
    /// `PublishEndpoint` (800).
    pub const PUBLISH_ENDPOINT: u16 = 800;
    /// `ResolveEndpoint` (801).
    pub const RESOLVE_ENDPOINT: u16 = 801;
    /// `Health` (802).
    pub const HEALTH: u16 = 802;
    /// `BroadcastPublish` (810). Ferry.
    pub const BROADCAST_PUBLISH: u16 = 810;
    /// `BroadcastFetch` (811). Ferry.
    pub const BROADCAST_FETCH: u16 = 811;
    /// `EnqueueMany` (812). Ferry.
    pub const ENQUEUE_MANY: u16 = 812;
    /// `RelayEnqueue` (900).
    pub const RELAY_ENQUEUE: u16 = 900;
    /// `RelayBatchEnqueue` (901).
    pub const RELAY_BATCH_ENQUEUE: u16 = 901;
    /// `ProxyFetchKeyPackage` (902).
    pub const PROXY_FETCH_KEY_PACKAGE: u16 = 902;
    /// `ProxyFetchHybridKey` (903).
    pub const PROXY_FETCH_HYBRID_KEY: u16 = 903;
    /// `ProxyResolveUser` (904).
    pub const PROXY_RESOLVE_USER: u16 = 904;
    /// `FederationHealth` (905).
    pub const FEDERATION_HEALTH: u16 = 905;
    /// `DeleteAccount` (950).
    pub const DELETE_ACCOUNT: u16 = 950;
    /// Push event `NewMessage` (1000).
    pub const PUSH_NEW_MESSAGE: u16 = 1000;
    /// Push event `Typing` (1001).
    pub const PUSH_TYPING: u16 = 1001;
    /// Push event `Presence` (1002).
    pub const PUSH_PRESENCE: u16 = 1002;
    /// Push event `Membership` (1003).
    pub const PUSH_MEMBERSHIP: u16 = 1003;
}

/// A known method of the qpq v2 table (documented ids and Ferry's 104-107 and 810-812).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
#[non_exhaustive]
pub enum Method {
    /// 100.
    OpaqueRegisterStart = 100,
    /// 101.
    OpaqueRegisterFinish = 101,
    /// 102.
    OpaqueLoginStart = 102,
    /// 103.
    OpaqueLoginFinish = 103,
    /// 104. Ferry.
    AuthChallenge = 104,
    /// 105. Ferry.
    AuthResponse = 105,
    /// 106. Ferry.
    ResumeSession = 106,
    /// 107. Ferry.
    Attach = 107,
    /// 200.
    Enqueue = 200,
    /// 201.
    Fetch = 201,
    /// 202.
    FetchWait = 202,
    /// 203.
    Peek = 203,
    /// 204.
    Ack = 204,
    /// 205.
    BatchEnqueue = 205,
    /// 300.
    UploadKeyPackage = 300,
    /// 301.
    FetchKeyPackage = 301,
    /// 302.
    UploadHybridKey = 302,
    /// 303.
    FetchHybridKey = 303,
    /// 304.
    FetchHybridKeys = 304,
    /// 400.
    CreateChannel = 400,
    /// 410.
    RemoveMember = 410,
    /// 411.
    UpdateGroupMetadata = 411,
    /// 412.
    ListGroupMembers = 412,
    /// 413.
    RotateKeys = 413,
    /// 420.
    ReportMessage = 420,
    /// 421.
    BanUser = 421,
    /// 422.
    UnbanUser = 422,
    /// 423.
    ListReports = 423,
    /// 424.
    ListBanned = 424,
    /// 500.
    ResolveUser = 500,
    /// 501.
    ResolveIdentity = 501,
    /// 510.
    RevokeKey = 510,
    /// 511.
    CheckRevocation = 511,
    /// 520.
    AuditKeyTransparency = 520,
    /// 600.
    UploadBlob = 600,
    /// 601.
    DownloadBlob = 601,
    /// 700.
    RegisterDevice = 700,
    /// 701.
    ListDevices = 701,
    /// 702.
    RevokeDevice = 702,
    /// 710.
    RegisterPushToken = 710,
    /// 750.
    StoreRecoveryBundle = 750,
    /// 751.
    FetchRecoveryBundle = 751,
    /// 752.
    DeleteRecoveryBundle = 752,
    /// 800.
    PublishEndpoint = 800,
    /// 801.
    ResolveEndpoint = 801,
    /// 802.
    Health = 802,
    /// 810. Ferry.
    BroadcastPublish = 810,
    /// 811. Ferry.
    BroadcastFetch = 811,
    /// 812. Ferry.
    EnqueueMany = 812,
    /// 900.
    RelayEnqueue = 900,
    /// 901.
    RelayBatchEnqueue = 901,
    /// 902.
    ProxyFetchKeyPackage = 902,
    /// 903.
    ProxyFetchHybridKey = 903,
    /// 904.
    ProxyResolveUser = 904,
    /// 905.
    FederationHealth = 905,
    /// 950.
    DeleteAccount = 950,
}

impl Method {
    /// Every known method, in id order.
    pub const ALL: [Method; 56] = [
        Method::OpaqueRegisterStart,
        Method::OpaqueRegisterFinish,
        Method::OpaqueLoginStart,
        Method::OpaqueLoginFinish,
        Method::AuthChallenge,
        Method::AuthResponse,
        Method::ResumeSession,
        Method::Attach,
        Method::Enqueue,
        Method::Fetch,
        Method::FetchWait,
        Method::Peek,
        Method::Ack,
        Method::BatchEnqueue,
        Method::UploadKeyPackage,
        Method::FetchKeyPackage,
        Method::UploadHybridKey,
        Method::FetchHybridKey,
        Method::FetchHybridKeys,
        Method::CreateChannel,
        Method::RemoveMember,
        Method::UpdateGroupMetadata,
        Method::ListGroupMembers,
        Method::RotateKeys,
        Method::ReportMessage,
        Method::BanUser,
        Method::UnbanUser,
        Method::ListReports,
        Method::ListBanned,
        Method::ResolveUser,
        Method::ResolveIdentity,
        Method::RevokeKey,
        Method::CheckRevocation,
        Method::AuditKeyTransparency,
        Method::UploadBlob,
        Method::DownloadBlob,
        Method::RegisterDevice,
        Method::ListDevices,
        Method::RevokeDevice,
        Method::RegisterPushToken,
        Method::StoreRecoveryBundle,
        Method::FetchRecoveryBundle,
        Method::DeleteRecoveryBundle,
        Method::PublishEndpoint,
        Method::ResolveEndpoint,
        Method::Health,
        Method::BroadcastPublish,
        Method::BroadcastFetch,
        Method::EnqueueMany,
        Method::RelayEnqueue,
        Method::RelayBatchEnqueue,
        Method::ProxyFetchKeyPackage,
        Method::ProxyFetchHybridKey,
        Method::ProxyResolveUser,
        Method::FederationHealth,
        Method::DeleteAccount,
    ];

    /// Maps a raw id; `None` for ids not in the table.
    pub fn from_id(id: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|m| *m as u16 == id)
    }

    /// The wire id.
    pub fn id(self) -> u16 {
        self as u16
    }

    /// The method name, as in the qpq documentation.
    pub fn name(self) -> &'static str {
        match self {
            Method::OpaqueRegisterStart => "OpaqueRegisterStart",
            Method::OpaqueRegisterFinish => "OpaqueRegisterFinish",
            Method::OpaqueLoginStart => "OpaqueLoginStart",
            Method::OpaqueLoginFinish => "OpaqueLoginFinish",
            Method::AuthChallenge => "AuthChallenge",
            Method::AuthResponse => "AuthResponse",
            Method::ResumeSession => "ResumeSession",
            Method::Attach => "Attach",
            Method::Enqueue => "Enqueue",
            Method::Fetch => "Fetch",
            Method::FetchWait => "FetchWait",
            Method::Peek => "Peek",
            Method::Ack => "Ack",
            Method::BatchEnqueue => "BatchEnqueue",
            Method::UploadKeyPackage => "UploadKeyPackage",
            Method::FetchKeyPackage => "FetchKeyPackage",
            Method::UploadHybridKey => "UploadHybridKey",
            Method::FetchHybridKey => "FetchHybridKey",
            Method::FetchHybridKeys => "FetchHybridKeys",
            Method::CreateChannel => "CreateChannel",
            Method::RemoveMember => "RemoveMember",
            Method::UpdateGroupMetadata => "UpdateGroupMetadata",
            Method::ListGroupMembers => "ListGroupMembers",
            Method::RotateKeys => "RotateKeys",
            Method::ReportMessage => "ReportMessage",
            Method::BanUser => "BanUser",
            Method::UnbanUser => "UnbanUser",
            Method::ListReports => "ListReports",
            Method::ListBanned => "ListBanned",
            Method::ResolveUser => "ResolveUser",
            Method::ResolveIdentity => "ResolveIdentity",
            Method::RevokeKey => "RevokeKey",
            Method::CheckRevocation => "CheckRevocation",
            Method::AuditKeyTransparency => "AuditKeyTransparency",
            Method::UploadBlob => "UploadBlob",
            Method::DownloadBlob => "DownloadBlob",
            Method::RegisterDevice => "RegisterDevice",
            Method::ListDevices => "ListDevices",
            Method::RevokeDevice => "RevokeDevice",
            Method::RegisterPushToken => "RegisterPushToken",
            Method::StoreRecoveryBundle => "StoreRecoveryBundle",
            Method::FetchRecoveryBundle => "FetchRecoveryBundle",
            Method::DeleteRecoveryBundle => "DeleteRecoveryBundle",
            Method::PublishEndpoint => "PublishEndpoint",
            Method::ResolveEndpoint => "ResolveEndpoint",
            Method::Health => "Health",
            Method::BroadcastPublish => "BroadcastPublish",
            Method::BroadcastFetch => "BroadcastFetch",
            Method::EnqueueMany => "EnqueueMany",
            Method::RelayEnqueue => "RelayEnqueue",
            Method::RelayBatchEnqueue => "RelayBatchEnqueue",
            Method::ProxyFetchKeyPackage => "ProxyFetchKeyPackage",
            Method::ProxyFetchHybridKey => "ProxyFetchHybridKey",
            Method::ProxyResolveUser => "ProxyResolveUser",
            Method::FederationHealth => "FederationHealth",
            Method::DeleteAccount => "DeleteAccount",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.id())
    }
}

/// Push event types, carried in the push frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum PushEvent {
    /// A new message was stored for the connection's identity.
    NewMessage = 1000,
    /// A group member started or stopped typing.
    Typing = 1001,
    /// A contact went online or offline.
    Presence = 1002,
    /// A group member was added or removed.
    Membership = 1003,
}

impl PushEvent {
    /// Maps a raw event type; `None` for unknown types.
    pub fn from_id(id: u16) -> Option<Self> {
        match id {
            1000 => Some(PushEvent::NewMessage),
            1001 => Some(PushEvent::Typing),
            1002 => Some(PushEvent::Presence),
            1003 => Some(PushEvent::Membership),
            _ => None,
        }
    }
}
