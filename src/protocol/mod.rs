//! The RESP wire format: requests in ([`request`]), replies out ([`reply`]),
//! and where a server's replies end ([`frame`]), for the proxy.

pub mod frame;
pub mod reply;
pub mod request;

pub use reply::{Protocol, ReplyWriter};
pub use request::{Limits, ProtocolError, RequestParser, complete_request, parse_i64};
