//! The RESP wire format: requests in ([`request`]), replies out ([`reply`]).

pub mod reply;
pub mod request;

pub use reply::{Protocol, ReplyWriter};
pub use request::{Limits, ProtocolError, RequestParser, parse_i64};
