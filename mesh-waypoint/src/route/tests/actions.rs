//! Actions: rewrites, redirects, direct responses, header edits, CORS; and how compile
//! problems are reported.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
};

use super::*;

fn decide(table: &RouteTable, req: &Req) -> HttpDecision {
    table.route_http(&req.facts()).expect("a rule matches")
}

#[test]
fn prefix_rewrite_replaces_the_matched_prefix_and_keeps_the_query() {
    let table = table(
        r#"
hosts: [reviews]
http:
- match: [{uri: {prefix: /v1/api}}, {uri: {exact: /old}}, {uri: {regex: "/r/[a-z]+"}}]
  rewrite: {uri: /api/v2, authority: reviews-v2.shop}
  route: [{destination: {host: reviews}}]
- match: [{uri: {prefix: /CASE}, ignoreUriCase: true}]
  rewrite: {uri: /case}
  route: [{destination: {host: reviews}}]
- rewrite: {uri: /base/}
  route: [{destination: {host: reviews}}]
"#,
    );
    let rewrite = |path: &str| decide(&table, &Req::get(path)).rewrite_path(path);
    assert_eq!(
        rewrite("/v1/api/users?id=1").as_deref(),
        Some("/api/v2/users?id=1")
    );
    assert_eq!(rewrite("/old?x").as_deref(), Some("/api/v2?x"));
    assert_eq!(rewrite("/r/abc").as_deref(), Some("/api/v2"));
    assert_eq!(rewrite("/case/X").as_deref(), Some("/case/X"));
    // Without a uri match the matched prefix is `/`, as in Envoy.
    assert_eq!(rewrite("/x/y").as_deref(), Some("/base/x/y"));

    let decision = decide(&table, &Req::get("/old"));
    let forward = decision.forward().unwrap();
    let destination = forward.destinations.pick(&mut rng());
    assert_eq!(decision.authority_for(destination), Some("reviews-v2.shop"));
}

#[test]
fn regex_rewrite_substitutes_re2_groups() {
    let table = table(
        r#"
hosts: [reviews]
http:
- rewrite:
    uriRegexRewrite: {match: "^/service/([^/]+)(/.*)$", rewrite: '\2/instance/\1'}
  route: [{destination: {host: reviews}}]
"#,
    );
    let decision = decide(&table, &Req::get("/service/foo/v1/api"));
    assert_eq!(
        decision.rewrite_path("/service/foo/v1/api?q=$1").as_deref(),
        Some("/v1/api/instance/foo?q=$1")
    );
    assert_eq!(decision.rewrite_path("/other").as_deref(), Some("/other"));
}

#[test]
fn regex_rewrite_with_a_missing_group_is_an_error() {
    let table = table_with_problems(
        r#"
hosts: [reviews]
http:
- rewrite: {uriRegexRewrite: {match: "/a/(.*)", rewrite: '/b/\2'}}
  route: [{destination: {host: reviews}}]
"#,
    );
    assert_eq!(table.http_rule_count(), 0);
    assert_eq!(
        table.errors()[0].path,
        "http[0].rewrite.uriRegexRewrite.rewrite"
    );
}

#[test]
fn redirect_builds_the_location() {
    let table = table(
        r#"
hosts: [reviews]
http:
- match: [{uri: {exact: /moved}}]
  redirect: {uri: /new, authority: new.example.com}
- match: [{uri: {exact: /secure}}]
  redirect: {scheme: https, port: 8443, redirectCode: 308}
- match: [{uri: {exact: /same-port}}]
  redirect: {authority: other.shop, derivePort: FROM_REQUEST_PORT}
- match: [{uri: {exact: /default-port}}]
  redirect: {scheme: https, derivePort: FROM_PROTOCOL_DEFAULT}
- match: [{uri: {prefix: /old/}}]
  redirect: {prefixRewrite: /new/, redirectCode: 302}
"#,
    );
    let location = |req: Req| {
        let decision = decide(&table, &req);
        let HttpAction::Redirect(redirect) = decision.action() else {
            panic!("not a redirect")
        };
        (
            redirect.status.as_u16(),
            decision.redirect_location(&req.facts()).unwrap(),
        )
    };
    assert_eq!(
        location(Req::get("/moved?a=1")),
        (301, "http://new.example.com/new?a=1".into())
    );
    assert_eq!(
        location(Req::get("/secure")),
        (308, "https://reviews:8443/secure".into())
    );
    assert_eq!(
        location(Req::get("/same-port").port(9080)),
        (301, "http://other.shop:9080/same-port".into())
    );
    assert_eq!(
        location(Req::get("/default-port")),
        (301, "https://reviews/default-port".into())
    );
    assert_eq!(
        location(Req::get("/old/page?x=1")),
        (302, "http://reviews:9080/new/page?x=1".into())
    );
    // No forwarding settings on a redirect.
    assert!(decide(&table, &Req::get("/moved")).forward().is_none());
}

#[test]
fn direct_response_answers_with_status_and_body() {
    let table = table(
        r#"
hosts: [reviews]
http:
- match: [{uri: {exact: /text}}]
  directResponse: {status: 503, body: {string: "maintenance"}}
- match: [{uri: {exact: /bytes}}]
  directResponse: {status: 200, body: {bytes: "aGVsbG8gd29ybGQ="}}
- directResponse: {status: 404}
"#,
    );
    let direct = |path: &str| match decide(&table, &Req::get(path)).action() {
        HttpAction::DirectResponse(direct) => direct.clone(),
        other => panic!("{other:?}"),
    };
    let text = direct("/text");
    assert_eq!(text.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(text.body.as_deref(), Some(&b"maintenance"[..]));
    assert_eq!(direct("/bytes").body.as_deref(), Some(&b"hello world"[..]));
    assert_eq!(direct("/else").body, None);
    assert_eq!(direct("/else").status, StatusCode::NOT_FOUND);
}

#[test]
fn header_edits_of_rule_and_destination_apply_in_order() {
    let table = table(
        r#"
hosts: [reviews]
http:
- headers:
    request:
      set: {x-env: prod, host: rewritten.shop}
      add: {x-hop: waypoint}
      remove: [x-debug]
    response:
      set: {cache-control: no-store}
      remove: [server]
  route:
  - destination: {host: reviews, subset: v1}
    headers:
      request: {set: {x-env: canary, ":authority": ignored.shop}}
      response: {add: {x-served-by: v1}}
"#,
    );
    let decision = decide(&table, &Req::get("/"));
    let destination = decision.forward().unwrap().destinations.pick(&mut rng());
    let mut request = HeaderMap::new();
    request.insert("x-debug", HeaderValue::from_static("1"));
    request.insert("x-hop", HeaderValue::from_static("client"));
    decision.headers().request.apply(&mut request);
    destination.headers.request.apply(&mut request);
    assert_eq!(request.get("x-env").unwrap(), "canary");
    assert!(request.get("x-debug").is_none());
    let hops: Vec<_> = request
        .get_all("x-hop")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(hops, ["client", "waypoint"]);
    assert!(
        request.get("host").is_none(),
        "host is an authority rewrite, not a header"
    );
    // The rule's authority wins over the destination's, as in Istio.
    assert_eq!(decision.authority_for(destination), Some("rewritten.shop"));

    let mut response = HeaderMap::new();
    response.insert("server", HeaderValue::from_static("envoy"));
    decision.headers().response.apply(&mut response);
    destination.headers.response.apply(&mut response);
    assert_eq!(response.get("cache-control").unwrap(), "no-store");
    assert_eq!(response.get("x-served-by").unwrap(), "v1");
    assert!(response.get("server").is_none());
}

fn cors_table(unmatched: &str) -> RouteTable {
    table(&format!(
        r#"
hosts: [reviews]
http:
- corsPolicy:
    allowOrigins: [{{exact: "https://shop.example"}}, {{regex: "https://.*\\.trusted\\.example"}}]
    allowMethods: [GET, POST]
    allowHeaders: ["*"]
    exposeHeaders: [x-total]
    maxAge: 24h
    allowCredentials: true
    unmatchedPreflights: {unmatched}
  route: [{{destination: {{host: reviews}}}}]
"#
    ))
}

#[test]
fn cors_answers_preflights_and_decorates_allowed_responses() {
    let table = cors_table("FORWARD");
    let cors = decide(&table, &Req::get("/")).cors().cloned().unwrap();
    let preflight = Req::get("/")
        .method(Method::OPTIONS)
        .header("origin", "https://a.trusted.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "x-token");
    let CorsResponse::Preflight { headers } = cors.evaluate(&preflight.method, &preflight.headers)
    else {
        panic!("an allowed preflight is answered by the proxy")
    };
    assert_eq!(
        headers[ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://a.trusted.example"
    );
    assert_eq!(headers[ACCESS_CONTROL_ALLOW_METHODS], "GET,POST");
    assert_eq!(
        headers[ACCESS_CONTROL_ALLOW_HEADERS], "x-token",
        "`*` echoes the request"
    );
    assert_eq!(headers[ACCESS_CONTROL_MAX_AGE], "86400");
    assert_eq!(headers[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");

    let actual = Req::get("/").header("origin", "https://shop.example");
    let CorsResponse::Forward { response_headers } = cors.evaluate(&actual.method, &actual.headers)
    else {
        panic!("an actual request is forwarded")
    };
    assert_eq!(
        response_headers[ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://shop.example"
    );
    assert_eq!(response_headers[ACCESS_CONTROL_EXPOSE_HEADERS], "x-total");

    let stranger = Req::get("/").header("origin", "https://evil.example");
    let no_headers = CorsResponse::Forward {
        response_headers: HeaderMap::new(),
    };
    assert_eq!(
        cors.evaluate(&stranger.method, &stranger.headers),
        no_headers
    );
    let stranger_preflight = stranger
        .method(Method::OPTIONS)
        .header("access-control-request-method", "GET");
    let (method, headers) = (&stranger_preflight.method, &stranger_preflight.headers);
    assert_eq!(
        cors.evaluate(method, headers),
        no_headers,
        "FORWARD sends it on"
    );
    let ignore = decide(&cors_table("IGNORE"), &Req::get("/"))
        .cors()
        .cloned()
        .unwrap();
    let CorsResponse::Preflight { headers } = ignore.evaluate(method, headers) else {
        panic!("IGNORE answers unmatched preflights itself")
    };
    assert!(headers.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    assert!(
        cors.evaluate(&Method::GET, &HeaderMap::new()) == no_headers,
        "no Origin: not CORS"
    );
}

#[test]
fn a_bad_regex_is_reported_and_only_its_rule_is_left_out() {
    let table = table_with_problems(
        r#"
hosts: [reviews]
http:
- match: [{uri: {regex: "/reviews/(\\d+"}}]
  route: [{destination: {host: reviews, subset: v2}}]
- route: [{destination: {host: reviews, subset: v1}}]
"#,
    );
    let [error] = table.errors() else {
        panic!("{:?}", table.errors())
    };
    assert_eq!(error.object, "VirtualService shop/reviews");
    assert_eq!(error.path, "http[0].match[0].uri.regex");
    let message = error.to_string();
    assert!(message.contains("not a valid RE2 regex"), "{message}");
    assert!(message.contains("rule http[0] is left out"), "{message}");
    assert_eq!(table.http_rule_count(), 1);
    assert_eq!(
        subset(&table, &Req::get("/reviews/1")).as_deref(),
        Some("v1")
    );
}

#[test]
fn invalid_values_leave_their_rule_out_with_the_fix() {
    let table = table_with_problems(
        r#"
hosts: [reviews]
http:
- timeout: 5 seconds
  route: [{destination: {host: reviews}}]
- redirect: {uri: /x, redirectCode: 200}
- directResponse: {status: 99}
- match: [{headers: {"bad header": {exact: x}}}]
  route: [{destination: {host: reviews}}]
- route: [{destination: {host: reviews, port: {number: 70000}}}]
- route: [{destination: {host: reviews}, weight: 0}, {destination: {host: ratings}, weight: 0}]
- fault: {abort: {grpcStatus: NOPE, percentage: {value: 10}}}
  route: [{destination: {host: reviews}}]
"#,
    );
    let paths: Vec<_> = table.errors().iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "http[0].timeout",
            "http[1].redirect.redirectCode",
            "http[2].directResponse.status",
            "http[3].match[0].headers[bad header]",
            "http[4].route[0].destination.port.number",
            "http[5].route",
            "http[6].fault.abort.grpcStatus",
        ]
    );
    assert_eq!(table.http_rule_count(), 0);
    assert!(table.errors()[0].message.contains("ns, us, ms, s, m, h"));
}

#[test]
fn unsupported_fields_are_listed_never_dropped_silently() {
    let yaml = vs_doc(
        "reviews",
        r#"
hosts: [reviews]
tls:
- match: [{sniHosts: [reviews]}]
  route: [{destination: {host: reviews}}]
http:
- delegate: {name: reviews-delegate}
- match: [{uri: {prefix: /}, statPrefix: reviews}]
  headers: {request: {set: {x-client: "%DOWNSTREAM_REMOTE_ADDRESS%"}, remove: [":path"]}}
  fault: {delay: {exponentialDelay: 1s}, abort: {http2Error: REFUSED_STREAM}}
  retries: {attempts: 3, retryOn: "5xx,envoy-ratelimited", retryRemoteLocalities: true}
  route: [{destination: {host: reviews}}]
- redirect: {uri: /x}
  timeout: 1s
"#,
    );
    let table = RouteTable::compile(&parse(&yaml));
    assert!(table.errors().is_empty(), "{:#?}", table.errors());
    let paths: Vec<_> = table
        .unsupported()
        .iter()
        .map(|p| p.path.as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "tls",
            "http[0].delegate",
            "http[1].match[0].statPrefix",
            "http[1].retries.retryOn",
            "http[1].retries.retryRemoteLocalities",
            "http[1].headers.request.set[x-client]",
            "http[1].headers.request.remove",
            "http[1].fault.delay.exponentialDelay",
            "http[1].fault.abort.http2Error",
            "http[2].timeout",
        ]
    );
    for problem in table.unsupported() {
        assert_eq!(problem.object, "VirtualService shop/reviews");
    }
    assert_eq!(table.http_rule_count(), 2, "the delegate rule is left out");
    let decision = decide(&table, &Req::get("/"));
    assert!(decision.fault().is_none(), "nothing injectable is left");
    let retries = decision.forward().unwrap().retries.clone().unwrap();
    assert_eq!(
        retries.retry_on.conditions().collect::<Vec<_>>(),
        [RetryCondition::Http5xx]
    );
}
