//! The load tools the lab benchmarks run inside a client pod, and their output parsed into
//! one shape: `wrk` (HTTP/1.1, closed loop), `xtask bench-peer paced` (HTTP/1.1 at a fixed
//! rate, [`crate::bench_paced`]) and `h2load` (HTTP/2).

use anyhow::{Context as _, Result, bail};
use mesh_sim::{Lab, Pod};

use crate::bench_config::exec;

/// `wrk -t1 -c16 -d{seconds}s --latency url` in `client`, as the peer figures were measured.
pub(crate) fn wrk(lab: &Lab, client: &Pod, url: &str, seconds: u64) -> Result<Figures> {
    wrk_with(lab, client, url, seconds, &[])
}

/// [`wrk`] with `extra` arguments (a `-s script` that shapes each request).
pub(crate) fn wrk_with(
    lab: &Lab,
    client: &Pod,
    url: &str,
    seconds: u64,
    extra: &[&str],
) -> Result<Figures> {
    let duration = format!("{seconds}s");
    let mut args = vec!["-t1", "-c16", "-d", &duration, "--latency"];
    args.extend(extra);
    args.push(url);
    parse_wrk(&exec(lab, client, "wrk", &args)?)
}

/// GETs of `http://host:port{path}` at `rate` per second over 16 keep-alive connections
/// for `seconds`, from `client`: latency at a fixed load.
pub(crate) fn paced(
    lab: &Lab,
    client: &Pod,
    (host, port, path): (&str, u16, &str),
    rate: u32,
    seconds: u64,
) -> Result<Figures> {
    let exe = std::env::current_exe()?;
    let exe = exe.to_str().context("the xtask path is not UTF-8")?;
    let (port, rate, seconds) = (port.to_string(), rate.to_string(), seconds.to_string());
    let args = [
        "bench-peer",
        "paced",
        "--host",
        host,
        "--port",
        &port,
        "--path",
        path,
        "--rate",
        &rate,
        "--connections",
        "16",
        "--seconds",
        &seconds,
    ];
    parse_paced(&exec(lab, client, exe, &args)?, &seconds)
}

/// What one load run reports; latencies in ms.
#[derive(Debug, Default, Clone)]
pub(crate) struct Figures {
    pub(crate) requests: f64,
    pub(crate) rps: f64,
    pub(crate) mean: f64,
    pub(crate) p50: Option<f64>,
    pub(crate) p90: Option<f64>,
    pub(crate) p99: Option<f64>,
}

/// `1.23ms`, `456.00us`, `1.02s`, `1.50m` (wrk, h2load) in ms.
fn ms(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        return None;
    };
    Some(number.parse::<f64>().ok()? * scale)
}

/// The fields after `label` on the first line that starts with it.
fn fields_after<'a>(text: &'a str, label: &str) -> Option<Vec<&'a str>> {
    text.lines().find_map(|l| {
        let rest = l.trim_start().strip_prefix(label)?;
        Some(rest.split([' ', ',']).filter(|f| !f.is_empty()).collect())
    })
}

pub(crate) fn parse_wrk(text: &str) -> Result<Figures> {
    let parsed = (|| {
        let requests = text
            .lines()
            .find(|l| l.contains(" requests in "))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        let rps = fields_after(text, "Requests/sec:")?.first()?.parse().ok()?;
        let mean = ms(fields_after(text, "Latency")?.first()?)?;
        let percentile = |p: &str| ms(fields_after(text, p)?.first()?);
        Some(Figures {
            requests,
            rps,
            mean,
            p50: percentile("50%"),
            p90: percentile("90%"),
            p99: percentile("99%"),
        })
    })();
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        eprintln!("bench: wrk reported errors:\n{text}");
    }
    parsed.with_context(|| format!("unexpected wrk output:\n{text}"))
}

/// `requests errors mean P50 P90 P99 max` in µs, from `bench-peer paced`.
pub(crate) fn parse_paced(text: &str, seconds: &str) -> Result<Figures> {
    let values: Vec<f64> = text
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let [requests, errors, mean, p50, p90, p99, _max] = values[..] else {
        bail!("unexpected bench-peer paced output: {text:?}");
    };
    if errors > 0.0 {
        eprintln!("bench: the paced client saw {errors} failed requests");
    }
    Ok(Figures {
        requests,
        rps: requests / seconds.parse::<f64>()?,
        mean: mean / 1000.0,
        p50: Some(p50 / 1000.0),
        p90: Some(p90 / 1000.0),
        p99: Some(p99 / 1000.0),
    })
}

pub(crate) fn parse_h2load(text: &str) -> Result<Figures> {
    let parsed = (|| {
        // finished in 5.00s, 12345.60 req/s, 13.45MB/s
        let finished = fields_after(text, "finished in")?;
        let rps = finished.get(finished.iter().position(|f| *f == "req/s")? - 1)?;
        // requests: 100 total, 100 started, 100 done, 100 succeeded, 0 failed, 0 errored, 0 timeout
        let requests = fields_after(text, "requests:")?;
        let count = |what: &str| -> Option<f64> {
            requests
                .get(requests.iter().position(|f| *f == what)? - 1)?
                .parse()
                .ok()
        };
        let succeeded = count("succeeded")?;
        if count("failed")? + count("errored")? + count("timeout")? > 0.0 {
            let summary = text
                .lines()
                .filter(|l| l.starts_with("requests:") || l.starts_with("status codes:"));
            eprintln!(
                "bench: h2load reported failed requests:\n{}",
                summary.collect::<Vec<_>>().join("\n")
            );
        }
        // time for request:  min  max  mean  sd  +/- sd
        let times = fields_after(text, "time for request:")?;
        Some(Figures {
            requests: succeeded,
            rps: rps.parse().ok()?,
            mean: ms(times.get(2)?)?,
            p50: None,
            p90: None,
            p99: None,
        })
    })();
    parsed.with_context(|| format!("unexpected h2load output:\n{text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_gives_requests_rate_and_percentiles_in_ms() {
        let text = "Running 5s test @ http://httpbin:8000/bytes/1024
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.52ms  812.00us  15.10ms   90.00%
    Req/Sec    10.52k   400.00     11.00k    70.00%
  Latency Distribution
     50%  1.31ms
     75%  1.70ms
     90%  2.20ms
     99%  4.62ms
  52340 requests in 5.00s, 60.10MB read
Requests/sec:  10467.12
Transfer/sec:     12.02MB
";
        let figures = parse_wrk(text).unwrap();
        assert_eq!(figures.requests, 52340.0);
        assert_eq!(figures.rps, 10467.12);
        assert!((figures.mean - 1.52).abs() < 1e-9);
        assert_eq!(figures.p50, Some(1.31));
        assert_eq!(figures.p90, Some(2.2));
        assert_eq!(figures.p99, Some(4.62));
    }

    #[test]
    fn h2load_output_gives_succeeded_requests_rate_and_mean() {
        let text = "finished in 5.00s, 20123.40 req/s, 21.50MB/s
requests: 100617 total, 100777 started, 100617 done, 100617 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 100617 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 107.51MB (112733421) total, 1.02MB (1069444) headers (space savings 95.01%), 98.26MB (103031808) data
                     min         max         mean         sd        +/- sd
time for request:      312us     21.40ms      7.85ms      2.10ms    71.20%
time for connect:      180us       1.20ms       600us       300us    62.50%
";
        let figures = parse_h2load(text).unwrap();
        assert_eq!(figures.requests, 100617.0);
        assert_eq!(figures.rps, 20123.4);
        assert!((figures.mean - 7.85).abs() < 1e-9);
        assert_eq!(figures.p99, None);
    }

    #[test]
    fn paced_output_gives_percentiles_in_ms_and_the_rate_over_the_run() {
        let figures = parse_paced("10000 0 480 410 620 1900 7300\n", "10").unwrap();
        assert_eq!(figures.requests, 10000.0);
        assert_eq!(figures.rps, 1000.0);
        assert_eq!(figures.p50, Some(0.41));
        assert_eq!(figures.p90, Some(0.62));
        assert_eq!(figures.p99, Some(1.9));
        assert!(parse_paced("10000 0 480 410 1900 7300\n", "10").is_err());
    }

    #[test]
    fn durations_convert_to_ms_by_unit() {
        assert_eq!(ms("456.00us"), Some(0.456));
        assert_eq!(ms("1.50ms"), Some(1.5));
        assert_eq!(ms("1.02s"), Some(1020.0));
        assert_eq!(ms("1.00m"), Some(60_000.0));
        assert_eq!(ms("12"), None);
    }
}
