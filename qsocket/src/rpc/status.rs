//! Typed call results: [`Code`] (the gRPC code set, same numbers) and [`Status`].

use std::fmt;

/// Status codes, numbered as gRPC's so they map one to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
#[non_exhaustive]
pub enum Code {
    /// Success.
    Ok = 0,
    /// The call was cancelled (by the caller).
    Cancelled = 1,
    /// An error of no other kind (also: a status number this version does not know).
    Unknown = 2,
    /// The request is invalid (e.g. a body that cannot be decoded).
    InvalidArgument = 3,
    /// The deadline passed before the call completed.
    DeadlineExceeded = 4,
    /// Something the request names does not exist.
    NotFound = 5,
    /// Something the request would create exists already.
    AlreadyExists = 6,
    /// The caller may not do this.
    PermissionDenied = 7,
    /// A limit was reached (sizes, concurrency, quotas).
    ResourceExhausted = 8,
    /// The system is not in a state in which the call can run.
    FailedPrecondition = 9,
    /// The call was aborted (e.g. a concurrency conflict).
    Aborted = 10,
    /// A value is outside its valid range.
    OutOfRange = 11,
    /// The service or method does not exist on the server, or a feature is not supported.
    Unimplemented = 12,
    /// A bug: an invariant broke, a handler panicked.
    Internal = 13,
    /// The service cannot be reached now (connection lost, no endpoint); retrying may help.
    Unavailable = 14,
    /// Data was lost or corrupted.
    DataLoss = 15,
    /// The caller did not prove who it is.
    Unauthenticated = 16,
}

impl Code {
    /// The code of a wire number; numbers this version does not know become `Unknown`.
    pub fn from_u16(n: u16) -> Code {
        use Code::*;
        match n {
            0 => Ok,
            1 => Cancelled,
            3 => InvalidArgument,
            4 => DeadlineExceeded,
            5 => NotFound,
            6 => AlreadyExists,
            7 => PermissionDenied,
            8 => ResourceExhausted,
            9 => FailedPrecondition,
            10 => Aborted,
            11 => OutOfRange,
            12 => Unimplemented,
            13 => Internal,
            14 => Unavailable,
            15 => DataLoss,
            16 => Unauthenticated,
            _ => Unknown,
        }
    }

    /// The snake-case name used in logs and statistics.
    pub fn as_str(self) -> &'static str {
        use Code::*;
        match self {
            Ok => "ok",
            Cancelled => "cancelled",
            Unknown => "unknown",
            InvalidArgument => "invalid_argument",
            DeadlineExceeded => "deadline_exceeded",
            NotFound => "not_found",
            AlreadyExists => "already_exists",
            PermissionDenied => "permission_denied",
            ResourceExhausted => "resource_exhausted",
            FailedPrecondition => "failed_precondition",
            Aborted => "aborted",
            OutOfRange => "out_of_range",
            Unimplemented => "unimplemented",
            Internal => "internal",
            Unavailable => "unavailable",
            DataLoss => "data_loss",
            Unauthenticated => "unauthenticated",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far a failed call's request got — what a retry policy needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The request never left this process: retrying it anywhere is safe.
    No,
    /// The request was handed to the connection; the server may or may not have run it
    /// (deadline passed, connection lost while waiting).
    Maybe,
    /// The server answered this status: it received the request.
    Yes,
}

/// The outcome of a failed call (or a handler's error): a code and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    code: Code,
    message: String,
    sent: Sent,
}

macro_rules! ctor {
    ($($name:ident => $code:ident),* $(,)?) => {$(
        #[doc = concat!("A `", stringify!($code), "` status with `message`.")]
        pub fn $name(message: impl Into<String>) -> Status {
            Status::new(Code::$code, message)
        }
    )*};
}

impl Status {
    /// A status with `code` and `message` (a locally made status: [`Sent::No`]).
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
            sent: Sent::No,
        }
    }

    ctor! {
        cancelled => Cancelled,
        unknown => Unknown,
        invalid_argument => InvalidArgument,
        deadline_exceeded => DeadlineExceeded,
        not_found => NotFound,
        already_exists => AlreadyExists,
        permission_denied => PermissionDenied,
        resource_exhausted => ResourceExhausted,
        failed_precondition => FailedPrecondition,
        aborted => Aborted,
        out_of_range => OutOfRange,
        unimplemented => Unimplemented,
        internal => Internal,
        unavailable => Unavailable,
        data_loss => DataLoss,
        unauthenticated => Unauthenticated,
    }

    /// The code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// How far the request got (see [`Sent`]).
    pub fn sent(&self) -> Sent {
        self.sent
    }

    /// Whether the request may have reached the server (`Sent::Maybe` or `Sent::Yes`).
    pub fn request_written(&self) -> bool {
        self.sent != Sent::No
    }

    pub(crate) fn with_sent(mut self, sent: Sent) -> Status {
        self.sent = sent;
        self
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Status {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_numbers_map_to_unknown() {
        for n in 0..=16u16 {
            assert_eq!(Code::from_u16(n) as u16, n);
        }
        assert_eq!(Code::from_u16(999), Code::Unknown);
        let s = Status::not_found("no such user");
        assert_eq!(s.to_string(), "not_found: no such user");
        assert!(!s.request_written());
    }
}
