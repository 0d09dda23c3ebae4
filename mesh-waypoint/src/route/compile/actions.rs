//! Compiling what a rule does: forward (destinations, rewrite, timeout, retries, mirrors),
//! redirect or answer directly.

use bytes::Bytes;
use http::StatusCode;
use mesh_core::config::istio::{
    HttpDirectResponse, HttpRedirect, HttpRewrite, HttpRoute, RedirectPortSelection,
};

use super::Ctx;
use super::headers::header_ops;
use super::policies::{mirrors, retries};
use crate::route::decision::{
    DirectResponse, Forward, HttpDestination, Redirect, RedirectPort, Rewrite, UriRewrite,
};

/// Istio's limit on a direct response body.
const MAX_DIRECT_BODY: usize = 1024 * 1024;

/// A destination weight; unset is 0 (which only matters with several destinations).
pub(super) fn weight(ctx: &mut Ctx<'_>, path: &str, weight: Option<i32>) -> u32 {
    let weight = weight.unwrap_or(0);
    u32::try_from(weight).unwrap_or_else(|_| {
        ctx.error(
            format!("{path}.weight"),
            format!("weight {weight} is negative; use 0 to 100"),
        );
        0
    })
}

pub(super) fn forward(ctx: &mut Ctx<'_>, path: &str, route: &HttpRoute) -> Option<Forward> {
    let mut entries = Vec::new();
    for (i, dest) in route.route.iter().enumerate() {
        let dpath = format!("{path}.route[{i}]");
        let weight = weight(ctx, &dpath, dest.weight);
        let headers = header_ops(ctx, &format!("{dpath}.headers"), dest.headers.as_ref());
        if let Some(target) = ctx.target(&format!("{dpath}.destination"), &dest.destination) {
            entries.push((weight, HttpDestination { target, headers }));
        }
    }
    let destinations = super::weighted(ctx, path, entries);
    let rewrite = route
        .rewrite
        .as_ref()
        .and_then(|r| rewrite(ctx, &format!("{path}.rewrite"), r));
    // `0s` is no timeout, as in Envoy.
    let timeout = route
        .timeout
        .as_deref()
        .and_then(|t| ctx.duration(format!("{path}.timeout"), t))
        .filter(|t| !t.is_zero());
    let retries = retries(ctx, &format!("{path}.retries"), route.retries.as_deref());
    let mirrors = mirrors(ctx, path, route);
    Some(Forward {
        destinations: destinations?,
        rewrite,
        timeout,
        retries,
        mirrors,
    })
}

/// Settings Istio only applies when forwarding: reported when a redirect or direct response
/// rule sets them.
pub(super) fn forward_only_fields(ctx: &mut Ctx<'_>, path: &str, route: &HttpRoute) {
    let set = [
        ("rewrite", route.rewrite.is_some()),
        ("timeout", route.timeout.is_some()),
        ("retries", route.retries.is_some()),
        ("mirror", route.mirror.is_some()),
        ("mirrors", !route.mirrors.is_empty()),
    ];
    for (field, _) in set.iter().filter(|(_, set)| *set) {
        ctx.unsupported(
            format!("{path}.{field}"),
            format!("{field} only applies to rules that route to destinations; ignored here"),
        );
    }
}

fn rewrite(ctx: &mut Ctx<'_>, path: &str, rewrite: &HttpRewrite) -> Option<Rewrite> {
    let uri = match (
        rewrite.uri.as_deref().filter(|u| !u.is_empty()),
        &rewrite.uri_regex_rewrite,
    ) {
        (Some(_), Some(_)) => {
            ctx.error(path, "set only one of uri and uriRegexRewrite");
            None
        }
        (Some(prefix), None) => Some(UriRewrite::Prefix(prefix.to_owned())),
        (None, Some(regex_rewrite)) => {
            let rpath = format!("{path}.uriRegexRewrite");
            match regex_rewrite.matches.as_deref().filter(|p| !p.is_empty()) {
                None => {
                    ctx.error(
                        format!("{rpath}.match"),
                        "match is empty; write the RE2 regex whose matches to replace",
                    );
                    None
                }
                Some(pattern) => {
                    let regex = ctx.regex(format!("{rpath}.match"), pattern, false)?;
                    let rewrite = regex_rewrite.rewrite.as_deref().unwrap_or_default();
                    match re2_substitution(rewrite, regex.captures_len() - 1) {
                        Ok(replacement) => Some(UriRewrite::Regex { regex, replacement }),
                        Err(why) => {
                            ctx.error(format!("{rpath}.rewrite"), why);
                            None
                        }
                    }
                }
            }
        }
        (None, None) => None,
    };
    Some(Rewrite {
        uri,
        authority: rewrite.authority.clone().filter(|a| !a.is_empty()),
    })
}

/// RE2's rewrite syntax (`\1`, `\\`) in the regex crate's (`${1}`, `$$`).
fn re2_substitution(rewrite: &str, groups: usize) -> Result<String, String> {
    let mut out = String::with_capacity(rewrite.len() + 8);
    let mut chars = rewrite.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(digit @ '0'..='9') => {
                    let group = digit.to_digit(10).unwrap_or_default();
                    if group as usize > groups {
                        return Err(format!(
                            "{rewrite:?} uses \\{group} but the regex has {groups} capture groups"
                        ));
                    }
                    out.push_str(&format!("${{{group}}}"));
                }
                Some('\\') => out.push('\\'),
                other => {
                    let escape = other.map_or(String::new(), String::from);
                    return Err(format!(
                        "{rewrite:?} has the escape \\{escape}; use \\0 to \\9 for groups and \\\\ for a backslash"
                    ));
                }
            },
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    Ok(out)
}

pub(super) fn redirect(ctx: &mut Ctx<'_>, path: &str, redirect: &HttpRedirect) -> Option<Redirect> {
    let status = match redirect.redirect_code.unwrap_or(0) {
        0 => Some(StatusCode::MOVED_PERMANENTLY),
        code @ (301 | 302 | 303 | 307 | 308) => u16::try_from(code)
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok()),
        code => {
            ctx.error(
                format!("{path}.redirectCode"),
                format!("{code} is not a redirect code; use 301, 302, 303, 307 or 308"),
            );
            None
        }
    };
    let port = match (redirect.port, redirect.derive_port) {
        (Some(_), Some(_)) => {
            ctx.error(path, "set only one of port and derivePort");
            None
        }
        (None | Some(0), None) => Some(RedirectPort::Keep),
        (Some(port), None) => match u16::try_from(port) {
            Ok(port) => Some(RedirectPort::Explicit(port)),
            Err(_) => {
                ctx.error(
                    format!("{path}.port"),
                    format!("port {port} is out of range; use 1 to 65535"),
                );
                None
            }
        },
        (None, Some(RedirectPortSelection::FromRequestPort)) => Some(RedirectPort::FromRequestPort),
        (None, Some(RedirectPortSelection::FromProtocolDefault)) => {
            Some(RedirectPort::FromProtocolDefault)
        }
    };
    let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    let uri = non_empty(&redirect.uri);
    let prefix_rewrite = non_empty(&redirect.prefix_rewrite);
    if uri.is_some() && prefix_rewrite.is_some() {
        ctx.error(path, "set only one of uri and prefixRewrite");
    }
    Some(Redirect {
        uri,
        prefix_rewrite,
        authority: non_empty(&redirect.authority),
        port: port?,
        scheme: non_empty(&redirect.scheme),
        status: status?,
    })
}

pub(super) fn direct_response(
    ctx: &mut Ctx<'_>,
    path: &str,
    direct: &HttpDirectResponse,
) -> Option<DirectResponse> {
    let status = u16::try_from(direct.status)
        .ok()
        .filter(|s| (200..=599).contains(s))
        .and_then(|s| StatusCode::from_u16(s).ok());
    if status.is_none() {
        ctx.error(
            format!("{path}.status"),
            format!("{} is not an HTTP status from 200 to 599", direct.status),
        );
    }
    let body = match direct.body.as_ref().map(|b| (&b.string, &b.bytes)) {
        None | Some((None, None)) => None,
        Some((Some(text), None)) => Some(Bytes::from(text.clone())),
        Some((None, Some(encoded))) => match base64_decode(encoded) {
            Some(bytes) => Some(Bytes::from(bytes)),
            None => {
                ctx.error(
                    format!("{path}.body.bytes"),
                    "is not base64; encode the body with base64 (or use body.string)",
                );
                None
            }
        },
        Some((Some(_), Some(_))) => {
            ctx.error(format!("{path}.body"), "set only one of string and bytes");
            None
        }
    };
    if let Some(body) = &body
        && body.len() > MAX_DIRECT_BODY
    {
        ctx.error(
            format!("{path}.body"),
            format!(
                "the body is {} bytes; Istio allows at most {MAX_DIRECT_BODY}",
                body.len()
            ),
        );
    }
    Some(DirectResponse {
        status: status?,
        body,
    })
}

/// Standard or URL-safe base64, padding optional (what protobuf's JSON `bytes` accepts).
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    // A lone trailing character carries fewer than 8 bits: not base64.
    (bits < 6).then_some(out)
}
