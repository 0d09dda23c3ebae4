//! `/status/{codes}` and `/delay/{seconds}` argument parsing: a single code, or httpbin's
//! weighted list (`200,503` with equal weights, `200:0.9,503:0.1` with explicit ones).

use std::time::Duration;

use http::header::{HeaderValue, LOCATION, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use rand::Rng;

use super::MAX_DELAY;
use crate::web::{self, Body};

/// Why a `/status` or `/delay` argument was rejected (answered with 400).
#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum Error {
    #[error("invalid status code {0:?}: use a number from 200 to 599")]
    Code(String),
    #[error("invalid weight {0:?}: use a non-negative number")]
    Weight(String),
    #[error("status list {0:?} has no positive weight")]
    NoWeight(String),
    #[error("invalid delay {0:?}: use a non-negative number of seconds")]
    Delay(String),
}

/// The codes a `/status` request may answer with, and their weights.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StatusChoice {
    pub(crate) choices: Vec<(StatusCode, f64)>,
}

impl StatusChoice {
    /// Picks one code at random, following the weights.
    pub(crate) fn pick(&self, rng: &mut impl Rng) -> StatusCode {
        let total: f64 = self.choices.iter().map(|(_, w)| w).sum();
        let mut point = rng.random_range(0.0..total);
        for (code, weight) in &self.choices {
            if point < *weight {
                return *code;
            }
            point -= weight;
        }
        self.choices
            .last()
            .map_or(StatusCode::OK, |(code, _)| *code)
    }
}

fn parse_code(raw: &str) -> Result<StatusCode, Error> {
    raw.trim()
        .parse::<u16>()
        .ok()
        .filter(|c| (200..=599).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| Error::Code(raw.to_owned()))
}

/// Parses `418`, `200,503` or `200:0.9,503:0.1`.
pub(crate) fn parse_status_list(raw: &str) -> Result<StatusChoice, Error> {
    let mut choices = Vec::new();
    for item in raw.split(',') {
        let (code, weight) = match item.split_once(':') {
            Some((code, weight)) => {
                let w = weight
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|w| w.is_finite() && *w >= 0.0)
                    .ok_or_else(|| Error::Weight(weight.to_owned()))?;
                (parse_code(code)?, w)
            }
            None => (parse_code(item)?, 1.0),
        };
        choices.push((code, weight));
    }
    if choices.iter().all(|(_, w)| *w <= 0.0) {
        return Err(Error::NoWeight(raw.to_owned()));
    }
    Ok(StatusChoice { choices })
}

/// Parses fractional seconds, capping at [`MAX_DELAY`].
pub(crate) fn parse_delay(raw: &str) -> Result<Duration, Error> {
    let secs = raw
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .ok_or_else(|| Error::Delay(raw.to_owned()))?;
    Ok(Duration::from_secs_f64(secs.min(MAX_DELAY.as_secs_f64())))
}

/// The empty-bodied answer for `code`, with go-httpbin's extra headers for redirects and 401.
pub(crate) fn response(code: StatusCode) -> Response<Body> {
    let mut resp = web::empty(code);
    match code.as_u16() {
        301 | 302 | 303 | 305 | 307 => {
            resp.headers_mut()
                .insert(LOCATION, HeaderValue::from_static("/redirect/1"));
        }
        401 => {
            resp.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"Fake Realm\""),
            );
        }
        _ => {}
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_code_is_the_only_choice() {
        let choice = parse_status_list("418").unwrap();
        assert_eq!(choice.choices, vec![(StatusCode::IM_A_TEAPOT, 1.0)]);
        assert_eq!(choice.pick(&mut rand::rng()), StatusCode::IM_A_TEAPOT);
    }

    #[test]
    fn weighted_list_parses_weights_and_defaults_to_equal() {
        let weighted = parse_status_list("200:0.9,503:0.1").unwrap();
        assert_eq!(
            weighted.choices,
            vec![
                (StatusCode::OK, 0.9),
                (StatusCode::SERVICE_UNAVAILABLE, 0.1)
            ]
        );
        let equal = parse_status_list("200,503").unwrap();
        assert_eq!(
            equal.choices,
            vec![
                (StatusCode::OK, 1.0),
                (StatusCode::SERVICE_UNAVAILABLE, 1.0)
            ]
        );
    }

    #[test]
    fn zero_weight_code_is_never_picked() {
        let choice = parse_status_list("200:0,503:1").unwrap();
        let mut rng = rand::rng();
        assert!((0..200).all(|_| choice.pick(&mut rng) == StatusCode::SERVICE_UNAVAILABLE));
    }

    #[test]
    fn invalid_codes_and_weights_are_rejected() {
        assert_eq!(parse_status_list("abc"), Err(Error::Code("abc".to_owned())));
        assert_eq!(parse_status_list("99"), Err(Error::Code("99".to_owned())));
        assert_eq!(parse_status_list("600"), Err(Error::Code("600".to_owned())));
        assert_eq!(
            parse_status_list("200:x"),
            Err(Error::Weight("x".to_owned()))
        );
        assert_eq!(
            parse_status_list("200:0"),
            Err(Error::NoWeight("200:0".to_owned()))
        );
        assert!(parse_status_list("").is_err());
    }

    #[test]
    fn delay_is_fractional_and_capped_at_ten_seconds() {
        assert_eq!(parse_delay("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_delay("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_delay("60"), Ok(MAX_DELAY));
        assert!(parse_delay("-1").is_err());
        assert!(parse_delay("soon").is_err());
        assert!(parse_delay("NaN").is_err());
    }

    #[test]
    fn redirect_codes_carry_a_location() {
        assert!(response(StatusCode::FOUND).headers().contains_key(LOCATION));
        assert!(
            response(StatusCode::UNAUTHORIZED)
                .headers()
                .contains_key(WWW_AUTHENTICATE)
        );
    }
}
