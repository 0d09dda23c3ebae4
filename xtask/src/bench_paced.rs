//! `xtask bench-peer paced`: HTTP/1.1 GETs at a fixed total rate over keep-alive connections,
//! run inside a pod by `bench waypoint`, for the latency a proxy adds at a given load (wrk
//! only runs closed-loop, wrk2 is not packaged, and h2load's `--rps` reports no
//! percentiles). Open loop, as wrk2: request `k` is due at `start + k / rate`, on connection
//! `k mod connections`; a request whose connection is still busy at its due time is timed
//! from that time (the wait is latency the proxy caused), one sent on time is timed from the
//! send (so the client's sleep overshoot is not counted). Prints one line: `requests errors
//! mean P50 P90 P99 max` (latencies in µs).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;

#[derive(Args)]
pub(crate) struct PacedArgs {
    /// Host name (or IP) and port to connect to; also the `Host` header.
    #[arg(long)]
    host: String,
    #[arg(long)]
    port: u16,
    #[arg(long, default_value = "/")]
    path: String,
    /// Requests per second, over all connections.
    #[arg(long)]
    rate: u32,
    #[arg(long, default_value_t = 16)]
    connections: u32,
    #[arg(long)]
    seconds: u64,
}

/// What one connection's worker saw.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    errors: u64,
}

pub(crate) fn run(args: &PacedArgs) -> Result<()> {
    let addr = (args.host.as_str(), args.port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {}", args.host))?
        .next()
        .with_context(|| format!("{} has no address", args.host))?;
    if args.rate == 0 || args.connections == 0 {
        bail!("--rate and --connections must be positive");
    }
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: xtask-paced\r\n\r\n",
        args.path, args.host, args.port
    );
    let interval = Duration::from_secs(1) / args.rate;
    // Time to open every connection before the first request is due.
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + Duration::from_secs(args.seconds);
    let workers: Vec<_> = (0..args.connections)
        .map(|first| {
            let request = request.clone();
            let step = args.connections;
            std::thread::spawn(move || worker(addr, &request, start, end, interval, first, step))
        })
        .collect();
    let mut all = Tally::default();
    for worker in workers {
        let tally = worker
            .join()
            .map_err(|_| anyhow::anyhow!("a paced worker panicked"))??;
        all.latencies.extend(tally.latencies);
        all.errors += tally.errors;
    }
    let latencies = &mut all.latencies;
    if latencies.is_empty() {
        bail!("no request succeeded ({} errors)", all.errors);
    }
    latencies.sort();
    let at = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    let mean = latencies.iter().sum::<Duration>() / latencies.len() as u32;
    println!(
        "{} {} {} {} {} {} {}",
        latencies.len(),
        all.errors,
        mean.as_micros(),
        at(50).as_micros(),
        at(90).as_micros(),
        at(99).as_micros(),
        latencies[latencies.len() - 1].as_micros()
    );
    Ok(())
}

/// Sends requests `first`, `first + step`, … on one connection until `end`, reconnecting
/// after an error.
fn worker(
    addr: SocketAddr,
    request: &str,
    start: Instant,
    end: Instant,
    interval: Duration,
    first: u32,
    step: u32,
) -> Result<Tally> {
    let mut tally = Tally::default();
    let mut conn = Some(BufReader::new(connect(addr)?));
    let mut line = String::new();
    for k in (first..).step_by(step as usize) {
        let due = start + interval * k;
        if due >= end {
            break;
        }
        let late = Instant::now() >= due;
        if !late {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let sent = Instant::now();
        let from = if late { due } else { sent };
        let reader = match &mut conn {
            Some(reader) => reader,
            None => conn.insert(BufReader::new(connect(addr)?)),
        };
        match get(reader, request, &mut line) {
            Ok(status) if (200..300).contains(&status) => tally.latencies.push(from.elapsed()),
            Ok(_) => tally.errors += 1,
            Err(_) => {
                tally.errors += 1;
                conn = None;
            }
        }
    }
    Ok(tally)
}

fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One request and its whole response (Content-Length or chunked body, read and dropped):
/// the status code.
fn get(reader: &mut BufReader<TcpStream>, request: &str, line: &mut String) -> Result<u16> {
    reader.get_mut().write_all(request.as_bytes())?;
    line.clear();
    reader.read_line(line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    loop {
        line.clear();
        if reader.read_line(line)? == 0 {
            bail!("connection closed in the response headers");
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<u64>()?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    if chunked {
        loop {
            line.clear();
            reader.read_line(line)?;
            let size = u64::from_str_radix(line.trim_end().split(';').next().unwrap_or(""), 16)
                .with_context(|| format!("bad chunk size {line:?}"))?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    line.clear();
                    if reader.read_line(line)? == 0 || line.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            skip(reader, size + 2)?;
        }
    } else {
        skip(
            reader,
            length.context("a response with neither length nor chunks")?,
        )?;
    }
    Ok(status)
}

fn skip(reader: &mut BufReader<TcpStream>, bytes: u64) -> Result<()> {
    let copied = std::io::copy(&mut reader.by_ref().take(bytes), &mut std::io::sink())?;
    if copied != bytes {
        bail!("connection closed in the response body");
    }
    Ok(())
}
