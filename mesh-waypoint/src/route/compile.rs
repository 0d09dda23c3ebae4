//! From Istio's typed VirtualServices to the engine's rules: rules and destinations here,
//! match blocks in [`matches`], actions in [`actions`], header edits in [`headers`], the
//! other policies in [`policies`]. Every problem is recorded in
//! a [`Ctx`]; a rule with an error is left out whole, so that no request is routed by half
//! a rule.

mod actions;
mod headers;
mod matches;
mod policies;

use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::config::host;
use mesh_core::config::istio::{
    Destination, HttpRoute, Percent, StringMatch, TcpRoute, VirtualService,
};
use regex::{Regex, RegexBuilder};

use super::decision::{HttpAction, HttpRule, Target, TcpRule, WeightedDestinations};
use super::matching::{HttpMatch, MESH_GATEWAY, StringMatcher};
use super::policy::Percentage;
use super::{Problem, RouteTable};

/// Compiled regexes are capped like mesh-core's validation caps them.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Where problems of one VirtualService go while it compiles.
pub(super) struct Ctx<'a> {
    object: &'a str,
    namespace: &'a str,
    /// Errors of the rule being compiled.
    rule_errors: Vec<Problem>,
    errors: Vec<Problem>,
    unsupported: Vec<Problem>,
}

impl<'a> Ctx<'a> {
    fn new(object: &'a str, namespace: &'a str) -> Ctx<'a> {
        Ctx {
            object,
            namespace,
            rule_errors: Vec::new(),
            errors: Vec::new(),
            unsupported: Vec::new(),
        }
    }

    fn problem(&self, path: impl Display, message: impl Into<String>) -> Problem {
        Problem {
            object: self.object.to_owned(),
            path: path.to_string(),
            message: message.into(),
        }
    }

    /// A problem that keeps the current rule out of the table.
    pub(super) fn error(&mut self, path: impl Display, message: impl Into<String>) {
        let problem = self.problem(path, message);
        self.rule_errors.push(problem);
    }

    /// A field the engine does not implement; `message` says what happens instead.
    pub(super) fn unsupported(&mut self, path: impl Display, message: impl Into<String>) {
        let problem = self.problem(path, message);
        self.unsupported.push(problem);
    }

    /// Keeps `rule` unless it had errors, which are then reported with the consequence.
    fn finish_rule<T>(&mut self, path: &str, rule: Option<T>) -> Option<T> {
        if self.rule_errors.is_empty() {
            return rule;
        }
        for mut problem in self.rule_errors.drain(..) {
            problem.message = format!(
                "{}; rule {path} is left out until this is fixed, so requests fall through to the next rule",
                problem.message
            );
            self.errors.push(problem);
        }
        None
    }

    pub(super) fn duration(&mut self, path: impl Display, text: &str) -> Option<Duration> {
        mesh_core::config::duration::parse(text)
            .map_err(|error| self.error(path, error.to_string()))
            .ok()
    }

    pub(super) fn percentage(
        &mut self,
        path: impl Display,
        percent: &Percent,
    ) -> Option<Percentage> {
        let value = percent.value.unwrap_or(0.0);
        let found = Percentage::new(value);
        if found.is_none() {
            self.error(
                format!("{path}.value"),
                format!("{value} is not a percentage; use a value from 0 to 100"),
            );
        }
        found
    }

    pub(super) fn int_percentage(&mut self, path: impl Display, value: i64) -> Option<Percentage> {
        // Exact: integers up to 100 convert to f64 without loss.
        let found = u8::try_from(value)
            .ok()
            .and_then(|v| Percentage::new(f64::from(v)));
        if found.is_none() {
            self.error(
                path,
                format!("{value} is not a percentage; use a value from 0 to 100"),
            );
        }
        found
    }

    /// A destination: host resolved against the VirtualService's namespace.
    pub(super) fn target(&mut self, path: &str, destination: &Destination) -> Option<Target> {
        if destination.host.is_empty() {
            self.error(
                format!("{path}.host"),
                "host is empty; name the destination service",
            );
            return None;
        }
        let port = match destination.port.as_ref().and_then(|p| p.number) {
            None | Some(0) => None,
            Some(number) => match u16::try_from(number) {
                Ok(port) => Some(port),
                Err(_) => {
                    self.error(
                        format!("{path}.port.number"),
                        format!("port {number} is out of range; use 1 to 65535"),
                    );
                    return None;
                }
            },
        };
        Some(Target {
            host: host::resolve(&destination.host, self.namespace),
            subset: destination.subset.clone().filter(|s| !s.is_empty()),
            port,
        })
    }

    /// A `StringMatch`; `star_is_presence`: `regex: "*"` means "present" (headers and query
    /// parameters, as Istio translates them).
    pub(super) fn string_matcher(
        &mut self,
        path: &str,
        m: &StringMatch,
        star_is_presence: bool,
    ) -> Option<StringMatcher> {
        match (&m.exact, &m.prefix, &m.regex) {
            (None, None, None) => Some(StringMatcher::Any),
            (Some(exact), None, None) => Some(StringMatcher::Exact(exact.clone())),
            (None, Some(prefix), None) => Some(StringMatcher::Prefix(prefix.clone())),
            (None, None, Some(re)) if star_is_presence && re == "*" => Some(StringMatcher::Any),
            (None, None, Some(re)) => self
                .regex(format!("{path}.regex"), re, true)
                .map(StringMatcher::Regex),
            _ => {
                self.error(path, "set only one of exact, prefix or regex");
                None
            }
        }
    }

    /// Compiles an RE2 pattern; `anchored` for full-match semantics.
    pub(super) fn regex(
        &mut self,
        path: impl Display,
        pattern: &str,
        anchored: bool,
    ) -> Option<Regex> {
        let source = if anchored {
            format!(r"\A(?:{pattern})\z")
        } else {
            pattern.to_owned()
        };
        match RegexBuilder::new(&source)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
        {
            Ok(regex) => Some(regex),
            Err(error) => {
                // The pattern as written makes the clearer message.
                let error = Regex::new(pattern).err().unwrap_or(error);
                // Syntax errors end with their one-line reason, after the pattern and a caret.
                let text = error.to_string();
                let reason = text
                    .lines()
                    .map(str::trim)
                    .rfind(|line| !line.is_empty())
                    .unwrap_or_default()
                    .trim_start_matches("error: ");
                self.error(
                    path,
                    format!("{pattern:?} is not a valid RE2 regex ({reason}); fix the pattern"),
                );
                None
            }
        }
    }
}

pub(super) fn compile(virtual_services: &[Arc<VirtualService>]) -> RouteTable {
    let mut table = RouteTable::default();
    for vs in virtual_services {
        let object = format!("VirtualService {}/{}", vs.namespace(), vs.name());
        let reference = format!("{}/{}", vs.namespace(), vs.name());
        let mut ctx = Ctx::new(&object, vs.namespace());
        let spec = &vs.spec;
        let gateways = &spec.gateways;
        if !gateways.is_empty() && !gateways.iter().any(|g| g == MESH_GATEWAY) {
            ctx.unsupported(
                "gateways",
                format!(
                    "bound only to gateways {gateways:?}; the waypoint serves mesh traffic, so it skips this VirtualService (add \"mesh\" to gateways to apply it here)"
                ),
            );
        } else {
            if !spec.tls.is_empty() {
                ctx.unsupported(
                    "tls",
                    "TLS routes (by SNI) are not implemented by the waypoint; TLS connections to these hosts are not routed by them",
                );
            }
            for (i, route) in spec.http.iter().enumerate() {
                let path = format!("http[{i}]");
                let rule = http_rule(&mut ctx, &path, &reference, route);
                if let Some(rule) = ctx.finish_rule(&path, rule) {
                    table.http.push(Arc::new(rule));
                }
            }
            for (i, route) in spec.tcp.iter().enumerate() {
                let path = format!("tcp[{i}]");
                let rule = tcp_rule(&mut ctx, &path, &reference, route);
                if let Some(rule) = ctx.finish_rule(&path, rule) {
                    table.tcp.push(Arc::new(rule));
                }
            }
        }
        table.errors.append(&mut ctx.errors);
        table.unsupported.append(&mut ctx.unsupported);
    }
    table
}

fn http_rule(
    ctx: &mut Ctx<'_>,
    path: &str,
    reference: &str,
    route: &HttpRoute,
) -> Option<HttpRule> {
    if route.delegate.is_some() {
        ctx.unsupported(
            format!("{path}.delegate"),
            "delegation to another VirtualService is not implemented; this rule is left out, so requests fall through to the next rule (inline the delegate's routes instead)",
        );
        return None;
    }
    let matches: Vec<HttpMatch> = route
        .matches
        .iter()
        .enumerate()
        .map(|(i, m)| {
            matches::http_match(ctx, &format!("{path}.match[{i}]"), route.name.as_deref(), m)
        })
        .collect();
    let action = match (
        !route.route.is_empty(),
        &route.redirect,
        &route.direct_response,
    ) {
        (true, None, None) => actions::forward(ctx, path, route).map(HttpAction::Forward),
        (false, Some(redirect), None) => {
            actions::redirect(ctx, &format!("{path}.redirect"), redirect).map(HttpAction::Redirect)
        }
        (false, None, Some(direct)) => {
            actions::direct_response(ctx, &format!("{path}.directResponse"), direct)
                .map(HttpAction::DirectResponse)
        }
        (false, None, None) => {
            ctx.error(
                path,
                "the rule has no route, redirect or directResponse; add one",
            );
            None
        }
        _ => {
            ctx.error(path, "set only one of route, redirect or directResponse");
            None
        }
    };
    if route.route.is_empty() && (route.redirect.is_some() || route.direct_response.is_some()) {
        actions::forward_only_fields(ctx, path, route);
    }
    let headers = headers::header_ops(ctx, &format!("{path}.headers"), route.headers.as_deref());
    let fault = route
        .fault
        .as_ref()
        .and_then(|f| policies::fault(ctx, &format!("{path}.fault"), f));
    let cors = route
        .cors_policy
        .as_ref()
        .and_then(|c| policies::cors(ctx, &format!("{path}.corsPolicy"), c));
    Some(HttpRule {
        virtual_service: reference.to_owned(),
        name: route.name.clone(),
        matches,
        action: action?,
        headers,
        fault,
        cors,
    })
}

fn tcp_rule(ctx: &mut Ctx<'_>, path: &str, reference: &str, route: &TcpRoute) -> Option<TcpRule> {
    let matches = route
        .matches
        .iter()
        .enumerate()
        .map(|(i, m)| matches::l4_match(ctx, &format!("{path}.match[{i}]"), m))
        .collect();
    let mut entries = Vec::new();
    for (i, dest) in route.route.iter().enumerate() {
        let dpath = format!("{path}.route[{i}]");
        let weight = actions::weight(ctx, &dpath, dest.weight);
        if let Some(target) = ctx.target(&format!("{dpath}.destination"), &dest.destination) {
            entries.push((weight, target));
        }
    }
    let destinations = weighted(ctx, path, entries)?;
    Some(TcpRule {
        virtual_service: reference.to_owned(),
        matches,
        destinations,
    })
}

/// Weighted destinations, or an error naming the route when none is left.
pub(super) fn weighted<T>(
    ctx: &mut Ctx<'_>,
    path: &str,
    entries: Vec<(u32, T)>,
) -> Option<WeightedDestinations<T>> {
    if entries.is_empty() {
        // Destinations that failed to compile have reported why already.
        if !ctx.rule_errors.is_empty() {
            return None;
        }
        ctx.error(
            format!("{path}.route"),
            "no usable destination; add at least one",
        );
        return None;
    }
    let found = WeightedDestinations::new(entries);
    if found.is_none() {
        ctx.error(
            format!("{path}.route"),
            "the destinations' weights sum to 0 (or overflow); give them weights that sum to 100",
        );
    }
    found
}
