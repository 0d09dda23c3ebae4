//! Compiling `headers`: request and response edits, and the authority rewrite hidden in them.

use std::collections::BTreeMap;

use http::{HeaderName, HeaderValue};
use mesh_core::config::istio::{HeaderOperations, Headers};

use super::Ctx;
use crate::route::decision::{HeaderEdits, HeaderOps};

/// `headers` of a rule or destination.
pub(super) fn header_ops(ctx: &mut Ctx<'_>, path: &str, headers: Option<&Headers>) -> HeaderOps {
    let mut ops = HeaderOps::default();
    let Some(headers) = headers else { return ops };
    if let Some(request) = &headers.request {
        let (edits, authority) = header_edits(ctx, &format!("{path}.request"), request, true);
        ops.request = edits;
        ops.authority = authority;
    }
    if let Some(response) = &headers.response {
        ops.response = header_edits(ctx, &format!("{path}.response"), response, false).0;
    }
    ops
}

/// Pseudo-headers and `host` cannot be edited (Istio drops them), except that setting the
/// request authority rewrites it.
fn internal(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

fn header_edits(
    ctx: &mut Ctx<'_>,
    path: &str,
    ops: &HeaderOperations,
    request: bool,
) -> (HeaderEdits, Option<String>) {
    let (set, set_authority) = header_pairs(ctx, &format!("{path}.set"), &ops.set, request);
    let (add, add_authority) = header_pairs(ctx, &format!("{path}.add"), &ops.add, request);
    let mut remove = Vec::new();
    for name in &ops.remove {
        let rpath = format!("{path}.remove");
        if internal(name) {
            ctx.unsupported(rpath, format!("{name:?} cannot be removed; ignored"));
        } else {
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(name) => remove.push(name),
                Err(_) => ctx.error(rpath, format!("{name:?} is not a valid header name")),
            }
        }
    }
    // Istio: an authority in `set` wins over one in `add`.
    (
        HeaderEdits { set, add, remove },
        set_authority.or(add_authority),
    )
}

type Pairs = Vec<(HeaderName, HeaderValue)>;

fn header_pairs(
    ctx: &mut Ctx<'_>,
    path: &str,
    map: &BTreeMap<String, String>,
    request: bool,
) -> (Pairs, Option<String>) {
    let mut pairs = Vec::new();
    let mut authority = None;
    for (name, value) in map {
        let hpath = format!("{path}[{name}]");
        if internal(name) {
            let is_authority =
                name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host");
            if request && is_authority {
                authority = Some(value.clone());
            } else {
                ctx.unsupported(hpath, format!("{name:?} cannot be edited; ignored"));
            }
            continue;
        }
        let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
            ctx.error(hpath, format!("{name:?} is not a valid header name"));
            continue;
        };
        let Ok(header_value) = HeaderValue::from_str(value) else {
            ctx.error(
                hpath,
                format!("{value:?} is not a valid header value (no control characters)"),
            );
            continue;
        };
        if value.contains('%') {
            ctx.unsupported(
                &hpath,
                format!("{value:?} looks like Envoy's %VARIABLE% substitution, which the waypoint does not implement; the value is sent as written"),
            );
        }
        pairs.push((header, header_value));
    }
    (pairs, authority)
}
