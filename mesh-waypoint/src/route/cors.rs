//! `corsPolicy`: which origins may call the route from a browser, answered the way Envoy's
//! CORS filter answers (preflights answered by the proxy, allowed origins echoed back).

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
};
use http::{HeaderMap, HeaderValue, Method};

use super::matching::StringMatcher;

/// A compiled `corsPolicy`.
#[derive(Debug, Clone)]
pub struct Cors {
    pub(crate) origins: Vec<StringMatcher>,
    pub(crate) allow_methods: Option<HeaderValue>,
    pub(crate) allow_headers: Option<HeaderValue>,
    pub(crate) expose_headers: Option<HeaderValue>,
    /// Seconds.
    pub(crate) max_age: Option<HeaderValue>,
    pub(crate) allow_credentials: bool,
    /// `unmatchedPreflights` other than `IGNORE`: preflights from origins that are not
    /// allowed go to the service.
    pub(crate) forward_unmatched_preflights: bool,
}

/// What the CORS policy makes of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsResponse {
    /// Forward the request; add these headers to the response (empty when the request is
    /// not a CORS request or its origin is not allowed).
    Forward { response_headers: HeaderMap },
    /// A preflight: answer `200 OK` with these headers and do not forward.
    Preflight { headers: HeaderMap },
}

impl Cors {
    /// Whether `origin` is allowed: an `allowOrigins` entry matches it, or matches `*`.
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.origins
            .iter()
            .any(|m| m.matches("*", false) || m.matches(origin, false))
    }

    /// Decides the CORS side of a request from its method and headers.
    pub fn evaluate(&self, method: &Method, request: &HeaderMap) -> CorsResponse {
        let forward_unchanged = || CorsResponse::Forward {
            response_headers: HeaderMap::new(),
        };
        let Some(origin) = request.get(ORIGIN).filter(|o| !o.is_empty()) else {
            return forward_unchanged();
        };
        let allowed = origin
            .to_str()
            .is_ok_and(|origin| self.allows_origin(origin));
        let requested_method = request
            .get(ACCESS_CONTROL_REQUEST_METHOD)
            .filter(|m| !m.is_empty());
        let preflight = method == Method::OPTIONS && requested_method.is_some();
        if !preflight {
            let mut headers = HeaderMap::new();
            if allowed {
                headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
                self.credentials(&mut headers);
                if let Some(expose) = &self.expose_headers {
                    headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
                }
            }
            return CorsResponse::Forward {
                response_headers: headers,
            };
        }
        if !allowed && self.forward_unmatched_preflights {
            return forward_unchanged();
        }
        let mut headers = HeaderMap::new();
        if allowed {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        }
        self.credentials(&mut headers);
        // `*` echoes what the browser asked for.
        let echo = |configured: &HeaderValue, asked: Option<&HeaderValue>| {
            if configured == "*" {
                asked.cloned()
            } else {
                Some(configured.clone())
            }
        };
        if let Some(methods) = self
            .allow_methods
            .as_ref()
            .and_then(|m| echo(m, requested_method))
        {
            headers.insert(ACCESS_CONTROL_ALLOW_METHODS, methods);
        }
        let requested_headers = request.get(ACCESS_CONTROL_REQUEST_HEADERS);
        if let Some(allowed) = self
            .allow_headers
            .as_ref()
            .and_then(|h| echo(h, requested_headers))
        {
            headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, allowed);
        }
        if let Some(max_age) = &self.max_age {
            headers.insert(ACCESS_CONTROL_MAX_AGE, max_age.clone());
        }
        CorsResponse::Preflight { headers }
    }

    fn credentials(&self, headers: &mut HeaderMap) {
        if self.allow_credentials {
            headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
}
