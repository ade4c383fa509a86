//! Reading replies of the `redis` crate: value accessors ([`text`],
//! [`int`], [`array`], ...), error assertions, map shapes per protocol,
//! decoded sessions ([`Session`], [`session`], [`get_session`]) and INFO
//! parsing ([`parse_info`], [`commandstats_calls`]).

use std::collections::BTreeMap;

use redis::Value;

use super::client::call;

/// The full error line (`CODE detail`) of a server error reply; panics on
/// anything else.
pub fn err_text(v: &Value) -> String {
    match v {
        Value::ServerError(e) => match e.details() {
            Some(d) => format!("{} {}", e.code(), d),
            None => e.code().to_string(),
        },
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// Asserts that `v` is exactly the error `expected` (`CODE detail`).
#[track_caller]
pub fn assert_err(v: &Value, expected: &str) {
    assert_eq!(err_text(v), expected, "reply was {v:?}");
}

/// Asserts that `v` is an error whose code is `code`.
#[track_caller]
pub fn assert_err_code(v: &Value, code: &str) {
    match v {
        Value::ServerError(e) => assert_eq!(e.code(), code, "error was {v:?}"),
        other => panic!("expected a {code} error, got {other:?}"),
    }
}

/// The text of a string-like reply (bulk, simple, verbatim, OK).
#[track_caller]
pub fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Okay => "OK".into(),
        Value::VerbatimString { text, .. } => text.clone(),
        other => panic!("expected a string reply, got {other:?}"),
    }
}

/// The bytes of a string-like reply.
#[track_caller]
pub fn bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b.clone(),
        Value::SimpleString(s) => s.as_bytes().to_vec(),
        Value::Okay => b"OK".to_vec(),
        Value::VerbatimString { text, .. } => text.as_bytes().to_vec(),
        other => panic!("expected a string reply, got {other:?}"),
    }
}

/// The integer of an integer reply.
#[track_caller]
pub fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        other => panic!("expected an integer reply, got {other:?}"),
    }
}

/// The elements of an array reply.
#[track_caller]
pub fn array(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items.clone(),
        other => panic!("expected an array reply, got {other:?}"),
    }
}

/// A bulk-string value, for comparisons.
pub fn bulk(s: impl AsRef<[u8]>) -> Value {
    Value::BulkString(s.as_ref().to_vec())
}

/// The pairs of a map reply: a RESP3 map when `resp3`, otherwise the flat
/// `[k1, v1, k2, v2, ...]` array RESP2 clients get. Panics if the shape is
/// the other protocol's.
#[track_caller]
pub fn map_pairs(v: &Value, resp3: bool) -> Vec<(Value, Value)> {
    match (v, resp3) {
        (Value::Map(pairs), true) => pairs.clone(),
        (Value::Array(items), false) => {
            assert!(items.len() % 2 == 0, "odd flat map: {v:?}");
            items
                .chunks(2)
                .map(|kv| (kv[0].clone(), kv[1].clone()))
                .collect()
        }
        (other, true) => panic!("expected a RESP3 map, got {other:?}"),
        (other, false) => panic!("expected a RESP2 flat array map, got {other:?}"),
    }
}

/// The one entry of SESSION.NODES marked `self`, as a map; asserts there is
/// exactly one, with the fields every entry has.
#[track_caller]
pub fn self_node(con: &mut redis::Connection, resp3: bool) -> BTreeMap<String, Value> {
    let nodes = match call(con, &["SESSION.NODES"]) {
        Value::Array(nodes) => nodes,
        other => panic!("SESSION.NODES answered {other:?}"),
    };
    let mut me: Vec<BTreeMap<String, Value>> = nodes
        .iter()
        .map(|n| map_of(n, resp3))
        .filter(|m| m.get("self") == Some(&Value::Int(1)))
        .collect();
    assert_eq!(me.len(), 1, "exactly one node is self: {nodes:?}");
    let me = me.remove(0);
    let keys: Vec<&str> = me.keys().map(String::as_str).collect();
    assert_eq!(keys, ["addr", "last_seen", "node", "self", "sessions"]);
    me
}

/// A map reply keyed by string, checking the protocol's shape and that no
/// key repeats.
#[track_caller]
pub fn map_of(v: &Value, resp3: bool) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for (k, val) in map_pairs(v, resp3) {
        let key = text(&k);
        assert!(
            out.insert(key.clone(), val).is_none(),
            "duplicate key {key} in {v:?}"
        );
    }
    out
}

/// The field names every session map carries, per commands.md.
pub const SESSION_FIELDS: [&str; 11] = [
    "attrs",
    "conn",
    "created",
    "expires",
    "id",
    "last_active",
    "node",
    "status",
    "ttl",
    "user",
    "version",
];

/// A decoded session map (from SESSION.GET or BYUSER WITHSESSIONS).
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub id: Vec<u8>,
    pub user: Option<Vec<u8>>,
    pub conn: Option<Vec<u8>>,
    pub status: String,
    pub node: String,
    pub created: i64,
    pub last_active: i64,
    pub expires: i64,
    pub ttl: i64,
    pub version: i64,
    pub attrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

fn optional_bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::Nil => None,
        other => Some(bytes(other)),
    }
}

/// Decodes a session map reply, asserting the exact field set of
/// commands.md, the protocol's map shape (nested for `attrs`) and integer
/// times.
#[track_caller]
pub fn session(v: &Value, resp3: bool) -> Session {
    let fields = map_of(v, resp3);
    let names: Vec<&str> = fields.keys().map(String::as_str).collect();
    assert_eq!(names, SESSION_FIELDS, "session field names in {v:?}");
    let attrs = map_pairs(&fields["attrs"], resp3)
        .into_iter()
        .map(|(k, v)| (bytes(&k), bytes(&v)))
        .collect::<BTreeMap<_, _>>();
    Session {
        id: bytes(&fields["id"]),
        user: optional_bytes(&fields["user"]),
        conn: optional_bytes(&fields["conn"]),
        status: text(&fields["status"]),
        node: text(&fields["node"]),
        created: int(&fields["created"]),
        last_active: int(&fields["last_active"]),
        expires: int(&fields["expires"]),
        ttl: int(&fields["ttl"]),
        version: int(&fields["version"]),
        attrs,
    }
}

/// SESSION.GET decoded; None when the reply is nil.
#[track_caller]
pub fn get_session(con: &mut redis::Connection, id: &str, resp3: bool) -> Option<Session> {
    match call(con, &["SESSION.GET", id]) {
        Value::Nil => None,
        v => Some(session(&v, resp3)),
    }
}

/// The ids of a SESSION.BYUSER reply, in order.
#[track_caller]
pub fn byuser(con: &mut redis::Connection, user: &str) -> Vec<String> {
    array(&call(con, &["SESSION.BYUSER", user]))
        .iter()
        .map(text)
        .collect()
}

/// Parses Redis's INFO text (`# Section` headers, `name:value` lines).
pub fn parse_info(info: &str) -> BTreeMap<String, String> {
    info.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The sum of `calls=` over every command of redis-server's
/// `INFO commandstats` (commands run inside scripts included).
pub fn commandstats_calls(con: &mut redis::Connection) -> u64 {
    let info = text(&call(con, &["INFO", "commandstats"]));
    info.lines()
        .filter(|l| l.starts_with("cmdstat_"))
        .filter_map(|l| {
            l.split([':', ','])
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}

/// The value of the first sample of `metric` (any labels) in Prometheus text.
pub fn metric_value(body: &str, metric: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
