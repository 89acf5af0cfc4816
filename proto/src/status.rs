//! Response status codes. 0-5 and 8-11 are qpq v2's; 6 and 7 fill the documented gap.

/// The `status` byte of a response frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// Malformed request, missing required field, or failed validation.
    BadRequest = 1,
    /// The connection is not authenticated, or the proof was wrong.
    Unauthorized = 2,
    /// Authenticated, but not allowed (for example someone else's mailbox).
    Forbidden = 3,
    /// The resource does not exist.
    NotFound = 4,
    /// Too many requests; back off before retrying.
    RateLimited = 5,
    /// Ferry: the frame payload exceeds 4 MiB.
    PayloadTooLarge = 6,
    /// Ferry: a quota or the disk is full; nothing was stored.
    ResourceExhausted = 7,
    /// The node could not finish in time.
    DeadlineExceeded = 8,
    /// Temporarily unable (storage busy, node draining).
    Unavailable = 9,
    /// Unexpected server error.
    Internal = 10,
    /// The method id is not registered.
    UnknownMethod = 11,
}

impl Status {
    /// Every status, in code order.
    pub const ALL: [Status; 12] = [
        Status::Ok,
        Status::BadRequest,
        Status::Unauthorized,
        Status::Forbidden,
        Status::NotFound,
        Status::RateLimited,
        Status::PayloadTooLarge,
        Status::ResourceExhausted,
        Status::DeadlineExceeded,
        Status::Unavailable,
        Status::Internal,
        Status::UnknownMethod,
    ];

    /// Maps a raw status byte; `None` for codes this crate does not know.
    pub fn from_u8(code: u8) -> Option<Self> {
        Self::ALL.iter().copied().find(|s| *s as u8 == code)
    }

    /// The name used in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "Ok",
            Status::BadRequest => "BadRequest",
            Status::Unauthorized => "Unauthorized",
            Status::Forbidden => "Forbidden",
            Status::NotFound => "NotFound",
            Status::RateLimited => "RateLimited",
            Status::PayloadTooLarge => "PayloadTooLarge",
            Status::ResourceExhausted => "ResourceExhausted",
            Status::DeadlineExceeded => "DeadlineExceeded",
            Status::Unavailable => "Unavailable",
            Status::Internal => "Internal",
            Status::UnknownMethod => "UnknownMethod",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), *self as u8)
    }
}
