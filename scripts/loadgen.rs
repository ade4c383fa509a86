//! The benchmark's own load generator, for what redis-benchmark cannot do:
//! a request made of several commands sent together (the seed design's
//! four-command create), and latency percentiles at a fixed offered load.
//! `scripts/bench.sh` builds it (`cargo build --release --features loadgen
//! --bin loadgen`) and pins it to its own CPU; it is not part of the product.
//!
//! Each of `--clients` connections keeps `--pipeline` requests in flight,
//! written together and answered together, as redis-benchmark's -P does. A
//! request is every `--command` template once, in order, with `{r}` replaced
//! by a random number below `--keyspace` (the same for the request's
//! commands, printed as `%012d`) and `{n}` by a number unique to the request.
//! With `--rate`, requests are started on a fixed schedule. A request sent
//! late because the server still held the connection's previous one counts
//! its latency from when it was due, so a stall shows in the percentiles
//! instead of hiding in fewer requests (coordinated omission); one sent on
//! time counts from its sending (the timer's millisecond grain is not the
//! server's).
//!
//! Prints one line: `rps=.. p50_us=.. p99_us=.. p999_us=.. max_us=.. errors=..`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long)]
    port: u16,
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Requests each connection sends together.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Requests in all.
    #[arg(long, default_value_t = 100_000)]
    requests: u64,
    /// Requests per second offered, over all connections (0: as fast as
    /// the server answers).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[arg(long, default_value_t = 100_000)]
    keyspace: u64,
    /// The first request's `{n}` (a later run starts past an earlier one's,
    /// so that its creates are new).
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// A command template, words separated by spaces; repeat for a request
    /// of several commands.
    #[arg(long = "command", required = true)]
    commands: Vec<String>,
}

/// Counts the complete RESP frames at the front of `buf` up to `want`;
/// returns (frames, bytes they take, errors among them).
fn complete_frames(buf: &[u8], want: usize) -> (usize, usize, u64) {
    let (mut frames, mut at, mut errors) = (0, 0, 0);
    while frames < want {
        match frame_end(buf, at) {
            Some(end) => {
                if buf[at] == b'-' || buf[at] == b'!' {
                    errors += 1;
                }
                frames += 1;
                at = end;
            }
            None => break,
        }
    }
    (frames, at, errors)
}

/// The end of the RESP2/RESP3 frame starting at `at`, if it is complete.
fn frame_end(buf: &[u8], at: usize) -> Option<usize> {
    let kind = *buf.get(at)?;
    let line_end = at + buf[at..].windows(2).position(|w| w == b"\r\n")?;
    let after = line_end + 2;
    let number = || -> Option<i64> {
        std::str::from_utf8(&buf[at + 1..line_end])
            .ok()?
            .parse()
            .ok()
    };
    match kind {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Some(after),
        b'$' | b'!' | b'=' => {
            let len = number()?;
            if len < 0 {
                return Some(after);
            }
            let end = after + len as usize + 2;
            (buf.len() >= end).then_some(end)
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let mut count = number()?;
            if count < 0 {
                return Some(after);
            }
            if kind == b'%' || kind == b'|' {
                count *= 2;
            }
            let mut end = after;
            for _ in 0..count {
                end = frame_end(buf, end)?;
            }
            Some(end)
        }
        _ => None,
    }
}

/// A small xorshift generator: each connection its own, no locking.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn encode(out: &mut Vec<u8>, template: &[Vec<u8>], random: u64, unique: u64) {
    let r = format!("{random:012}");
    let n = unique.to_string();
    out.extend_from_slice(format!("*{}\r\n", template.len()).as_bytes());
    for word in template {
        let word = String::from_utf8_lossy(word)
            .replace("{r}", &r)
            .replace("{n}", &n);
        out.extend_from_slice(format!("${}\r\n", word.len()).as_bytes());
        out.extend_from_slice(word.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

struct Shared {
    args: Args,
    templates: Vec<Vec<Vec<u8>>>,
    next: AtomicU64,
    errors: AtomicU64,
    start: Instant,
}

async fn client(shared: Arc<Shared>, index: usize) -> std::io::Result<Vec<u32>> {
    let args = &shared.args;
    let mut stream = TcpStream::connect((args.host.as_str(), args.port)).await?;
    stream.set_nodelay(true)?;
    let mut random = Random(0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1));
    let mut latencies = Vec::new();
    let mut out = Vec::new();
    let mut input = Vec::with_capacity(64 * 1024);
    let per_request = shared.templates.len();
    // Each connection's share of the offered rate: one batch every interval.
    let interval = (args.rate > 0).then(|| {
        Duration::from_secs_f64(args.clients as f64 * args.pipeline as f64 / args.rate as f64)
    });
    // Connections spread over the interval, not all due at once.
    let mut due = shared.start
        + interval.map_or(Duration::ZERO, |i| {
            i.mul_f64(index as f64 / args.clients as f64)
        });
    loop {
        let first = shared
            .next
            .fetch_add(args.pipeline as u64, Ordering::Relaxed);
        if first >= args.requests {
            return Ok(latencies);
        }
        let batch = (args.requests - first).min(args.pipeline as u64) as usize;
        out.clear();
        for i in 0..batch {
            let r = random.below(args.keyspace);
            for template in &shared.templates {
                encode(&mut out, template, r, args.first + first + i as u64);
            }
        }
        let started = match interval {
            Some(interval) => {
                due += interval;
                if Instant::now() < due {
                    // Early: wait for the schedule, and count from the
                    // send (the timer's own lateness is not the server's).
                    tokio::time::sleep_until(due.into()).await;
                    Instant::now()
                } else {
                    // Late because the server held the previous batch: count
                    // from when this one was due.
                    due
                }
            }
            None => Instant::now(),
        };
        stream.write_all(&out).await?;
        let mut want = batch * per_request;
        while want > 0 {
            let (frames, used, errors) = complete_frames(&input, want);
            if frames > 0 {
                input.drain(..used);
                want -= frames;
                shared.errors.fetch_add(errors, Ordering::Relaxed);
                continue;
            }
            if stream.read_buf(&mut input).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        let micros = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        latencies.extend(std::iter::repeat_n(micros, batch));
    }
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let templates = args
        .commands
        .iter()
        .map(|c| {
            c.split_whitespace()
                .map(|w| w.as_bytes().to_vec())
                .collect()
        })
        .collect();
    let shared = Arc::new(Shared {
        templates,
        next: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        start: Instant::now(),
        args,
    });
    let clients: Vec<_> = (0..shared.args.clients)
        .map(|i| tokio::spawn(client(shared.clone(), i)))
        .collect();
    let mut latencies = Vec::new();
    for handle in clients {
        match handle.await {
            Ok(Ok(mine)) => latencies.extend(mine),
            Ok(Err(error)) => {
                eprintln!("loadgen: a connection failed: {error}");
                std::process::exit(1);
            }
            Err(error) => {
                eprintln!("loadgen: a connection task failed: {error}");
                std::process::exit(1);
            }
        }
    }
    let elapsed = shared.start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    println!(
        "rps={:.0} p50_us={} p99_us={} p999_us={} max_us={} errors={}",
        latencies.len() as f64 / elapsed,
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        percentile(&latencies, 99.9),
        latencies.last().copied().unwrap_or(0),
        shared.errors.load(Ordering::Relaxed),
    );
}
