//! The per-rule policies that need a roll of the dice or a judgement on an upstream result:
//! fault injection, mirroring and retries, with Istio's defaults.

use std::time::Duration;

use http::StatusCode;
use rand::Rng;

use super::decision::Target;

/// A share of requests, from 0 to 100 %.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Percentage(f64);

impl Percentage {
    pub const ALL: Percentage = Percentage(100.0);
    pub const NONE: Percentage = Percentage(0.0);

    /// `None` unless `0 <= value <= 100`.
    pub fn new(value: f64) -> Option<Percentage> {
        (0.0..=100.0).contains(&value).then_some(Percentage(value))
    }

    pub fn value(self) -> f64 {
        self.0
    }

    /// True for this share of calls: always at 100 %, never at 0 %.
    pub fn roll<R: Rng + ?Sized>(self, rng: &mut R) -> bool {
        if self.0 >= 100.0 {
            true
        } else if self.0 <= 0.0 {
            false
        } else {
            rng.random::<f64>() * 100.0 < self.0
        }
    }
}

/// `fault`: delays and aborts injected before forwarding, each for its own share of
/// requests (rolled independently, as Envoy does). Unset percentages mean 0 %: Istio
/// injects nothing unless told how often.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FaultDelay {
    pub duration: Duration,
    pub percentage: Percentage,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FaultAbort {
    pub error: AbortError,
    pub percentage: Percentage,
}

/// How an injected abort answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortError {
    Http(StatusCode),
    /// A gRPC status code (`UNAVAILABLE` is 14), sent as `grpc-status` with HTTP 200.
    Grpc(u32),
}

/// What the dice decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultOutcome {
    /// Wait this long before going on (or before aborting).
    pub delay: Option<Duration>,
    /// Answer with this instead of forwarding.
    pub abort: Option<AbortError>,
}

impl Fault {
    pub fn roll<R: Rng + ?Sized>(&self, rng: &mut R) -> FaultOutcome {
        FaultOutcome {
            delay: self
                .delay
                .as_ref()
                .filter(|d| d.percentage.roll(rng))
                .map(|d| d.duration),
            abort: self
                .abort
                .as_ref()
                .filter(|a| a.percentage.roll(rng))
                .map(|a| a.error),
        }
    }
}

/// gRPC status names as Istio's `grpcStatus` spells them, by code.
pub(crate) const GRPC_STATUS: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// `mirror`/`mirrors`: a copy of the request sent to another destination, response ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    pub target: Target,
    pub percentage: Percentage,
}

impl Mirror {
    /// Whether this request is mirrored.
    pub fn roll<R: Rng + ?Sized>(&self, rng: &mut R) -> bool {
        self.percentage.roll(rng)
    }
}

/// `retries`, compiled. Istio's default applies when a rule sets no `retries`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first try (so at most `1 + attempts` tries).
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub retry_on: RetryOn,
    /// Base interval of the exponential back-off; `None`: Envoy's 25 ms.
    pub backoff: Option<Duration>,
    /// Prefer endpoints not tried yet (Istio's default: yes).
    pub ignore_previous_hosts: bool,
}

impl RetryPolicy {
    /// Istio's default: 2 retries on connect-failure, refused-stream, unavailable, cancelled
    /// and retriable-status-codes with 503.
    pub fn istio_default() -> RetryPolicy {
        RetryPolicy {
            attempts: 2,
            per_try_timeout: None,
            retry_on: RetryOn::istio_default(),
            backoff: None,
            ignore_previous_hosts: true,
        }
    }
}

/// One `retryOn` condition (Envoy's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RetryCondition {
    /// `5xx`: any 5xx response, or no response at all (reset, connect failure).
    Http5xx,
    /// `gateway-error`: 502, 503, 504, or no response at all.
    GatewayError,
    /// `reset`: no response (disconnect, reset, read timeout).
    Reset,
    /// `reset-before-request`: reset before the request was sent upstream.
    ResetBeforeRequest,
    /// `connect-failure`.
    ConnectFailure,
    /// `refused-stream`: HTTP/2 REFUSED_STREAM.
    RefusedStream,
    /// `retriable-4xx`: 409.
    Retriable4xx,
    /// `retriable-status-codes`: the listed codes.
    RetriableStatusCodes,
    /// gRPC `cancelled` (1).
    GrpcCancelled,
    /// gRPC `deadline-exceeded` (4).
    GrpcDeadlineExceeded,
    /// gRPC `resource-exhausted` (8).
    GrpcResourceExhausted,
    /// gRPC `internal` (13).
    GrpcInternal,
    /// gRPC `unavailable` (14).
    GrpcUnavailable,
}

impl RetryCondition {
    const ALL: [RetryCondition; 13] = [
        RetryCondition::Http5xx,
        RetryCondition::GatewayError,
        RetryCondition::Reset,
        RetryCondition::ResetBeforeRequest,
        RetryCondition::ConnectFailure,
        RetryCondition::RefusedStream,
        RetryCondition::Retriable4xx,
        RetryCondition::RetriableStatusCodes,
        RetryCondition::GrpcCancelled,
        RetryCondition::GrpcDeadlineExceeded,
        RetryCondition::GrpcResourceExhausted,
        RetryCondition::GrpcInternal,
        RetryCondition::GrpcUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RetryCondition::Http5xx => "5xx",
            RetryCondition::GatewayError => "gateway-error",
            RetryCondition::Reset => "reset",
            RetryCondition::ResetBeforeRequest => "reset-before-request",
            RetryCondition::ConnectFailure => "connect-failure",
            RetryCondition::RefusedStream => "refused-stream",
            RetryCondition::Retriable4xx => "retriable-4xx",
            RetryCondition::RetriableStatusCodes => "retriable-status-codes",
            RetryCondition::GrpcCancelled => "cancelled",
            RetryCondition::GrpcDeadlineExceeded => "deadline-exceeded",
            RetryCondition::GrpcResourceExhausted => "resource-exhausted",
            RetryCondition::GrpcInternal => "internal",
            RetryCondition::GrpcUnavailable => "unavailable",
        }
    }

    pub fn parse(name: &str) -> Option<RetryCondition> {
        RetryCondition::ALL.into_iter().find(|c| c.as_str() == name)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A failure without an upstream response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// The connection to the endpoint could not be made (refused, timed out).
    ConnectFailure,
    /// The endpoint refused the HTTP/2 stream.
    RefusedStream,
    /// The stream or connection was reset; `request_sent`: after the request went out.
    Reset { request_sent: bool },
}

/// The parsed `retryOn` set: conditions plus retriable status codes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetryOn {
    conditions: u16,
    status_codes: Vec<StatusCode>,
}

impl RetryOn {
    pub fn istio_default() -> RetryOn {
        let mut on = RetryOn::default();
        for c in [
            RetryCondition::ConnectFailure,
            RetryCondition::RefusedStream,
            RetryCondition::GrpcUnavailable,
            RetryCondition::GrpcCancelled,
            RetryCondition::RetriableStatusCodes,
        ] {
            on.insert(c);
        }
        on.status_codes.push(StatusCode::SERVICE_UNAVAILABLE);
        on
    }

    /// Parses Istio's comma-separated `retryOn`: Envoy condition names and HTTP status
    /// codes (which imply `retriable-status-codes`). Unknown names come back separately.
    pub fn parse(text: &str) -> (RetryOn, Vec<String>) {
        let mut on = RetryOn::default();
        let mut unknown = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Some(code) = part
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
                .and_then(|c| StatusCode::from_u16(c).ok())
            {
                on.status_codes.push(code);
                on.insert(RetryCondition::RetriableStatusCodes);
            } else if let Some(condition) = RetryCondition::parse(part) {
                on.insert(condition);
            } else {
                unknown.push(part.to_owned());
            }
        }
        (on, unknown)
    }

    fn insert(&mut self, condition: RetryCondition) {
        self.conditions |= condition.bit();
    }

    pub fn contains(&self, condition: RetryCondition) -> bool {
        self.conditions & condition.bit() != 0
    }

    pub fn conditions(&self) -> impl Iterator<Item = RetryCondition> + '_ {
        RetryCondition::ALL
            .into_iter()
            .filter(|c| self.contains(*c))
    }

    pub fn status_codes(&self) -> &[StatusCode] {
        &self.status_codes
    }

    /// Whether a response with this status (and `grpc-status`, if any) is retried.
    pub fn retries_response(&self, status: StatusCode, grpc_status: Option<u32>) -> bool {
        use RetryCondition::*;
        let code = status.as_u16();
        let by_status = (self.contains(Http5xx) && status.is_server_error())
            || (self.contains(GatewayError) && matches!(code, 502..=504))
            || (self.contains(Retriable4xx) && code == 409)
            || (self.contains(RetriableStatusCodes) && self.status_codes.contains(&status));
        let by_grpc = grpc_status.is_some_and(|g| {
            let condition = match g {
                1 => GrpcCancelled,
                4 => GrpcDeadlineExceeded,
                8 => GrpcResourceExhausted,
                13 => GrpcInternal,
                14 => GrpcUnavailable,
                _ => return false,
            };
            self.contains(condition)
        });
        by_status || by_grpc
    }

    /// Whether a failure without a response is retried (Envoy: `5xx`, `gateway-error` and
    /// `reset` cover every such failure).
    pub fn retries_failure(&self, failure: UpstreamFailure) -> bool {
        use RetryCondition::*;
        if self.contains(Http5xx) || self.contains(GatewayError) || self.contains(Reset) {
            return true;
        }
        match failure {
            UpstreamFailure::ConnectFailure => {
                self.contains(ConnectFailure) || self.contains(ResetBeforeRequest)
            }
            UpstreamFailure::RefusedStream => self.contains(RefusedStream),
            UpstreamFailure::Reset { request_sent } => {
                !request_sent && self.contains(ResetBeforeRequest)
            }
        }
    }
}
