//! Match blocks: every condition kind, ORed blocks, ANDed conditions, rule order.

use serde_json::json;

use super::*;

/// The subset the request is routed to, or `None` when no rule matches.
fn routed(table: &RouteTable, req: Req) -> Option<String> {
    subset(table, &req)
}

#[test]
fn uri_exact_prefix_and_regex_ignore_the_query_string() {
    let table = table(
        r#"
hosts: [reviews]
http:
- match: [{uri: {exact: /health}}]
  route: [{destination: {host: reviews, subset: exact}}]
- match: [{uri: {prefix: /api/}}]
  route: [{destination: {host: reviews, subset: prefix}}]
- match: [{uri: {regex: "/reviews/[0-9]+"}}]
  route: [{destination: {host: reviews, subset: regex}}]
"#,
    );
    let to = |path: &str| routed(&table, Req::get(path));
    assert_eq!(to("/health").as_deref(), Some("exact"));
    assert_eq!(to("/health?verbose=1").as_deref(), Some("exact"));
    assert_eq!(to("/health/x"), None);
    assert_eq!(to("/api/v1?x=/health").as_deref(), Some("prefix"));
    assert_eq!(to("/api"), None);
    assert_eq!(to("/reviews/12?page=2").as_deref(), Some("regex"));
    // RE2 full match: the regex must cover the whole path.
    assert_eq!(to("/reviews/12/extra"), None);
    assert_eq!(to("/x/reviews/12"), None);
}

#[test]
fn ignore_uri_case_folds_exact_and_prefix_but_not_regex() {
    let table = table(
        r#"
hosts: [reviews]
http:
- match:
  - {uri: {prefix: /API}, ignoreUriCase: true}
  - {uri: {exact: /Login}, ignoreUriCase: true}
  - {uri: {regex: /Case}, ignoreUriCase: true}
  route: [{destination: {host: reviews, subset: v1}}]
"#,
    );
    for hit in ["/api/x", "/Api", "/LOGIN", "/login", "/Case"] {
        assert!(routed(&table, Req::get(hit)).is_some(), "{hit}");
    }
    for miss in ["/ap", "/login/x", "/case"] {
        assert!(routed(&table, Req::get(miss)).is_none(), "{miss}");
    }
}

#[test]
fn headers_match_by_value_or_presence_with_case_insensitive_names() {
    let table = table(
        r#"
hosts: [reviews]
http:
- match:
  - headers:
      x-version: {exact: v2}
      x-user: {prefix: admin-}
  route: [{destination: {host: reviews, subset: both}}]
- match:
  - headers:
      x-trace: {}
  route: [{destination: {host: reviews, subset: present}}]
- match:
  - headers:
      x-star: {regex: "*"}
      x-digits: {regex: "[0-9]{3}"}
  route: [{destination: {host: reviews, subset: regex}}]
"#,
    );
    let both = Req::get("/")
        .header("x-version", "v2")
        .header("x-user", "admin-bob");
    assert_eq!(routed(&table, both).as_deref(), Some("both"));
    let one = Req::get("/")
        .header("x-version", "v2")
        .header("x-user", "bob");
    assert_eq!(routed(&table, one), None, "conditions in a block are ANDed");
    let empty = Req::get("/").header("x-trace", "");
    assert_eq!(routed(&table, empty).as_deref(), Some("present"));
    let regex = Req::get("/").header("x-star", "").header("x-digits", "123");
    assert_eq!(routed(&table, regex).as_deref(), Some("regex"));
    let long = Req::get("/")
        .header("x-star", "a")
        .header("x-digits", "1234");
    assert_eq!(routed(&table, long), None);
}

#[test]
fn repeated_headers_are_matched_joined_with_commas() {
    let table = table(
        r#"
hosts: [reviews]
http:
- match: [{headers: {x-tag: {exact: "a,b"}}}]
  route: [{destination: {host: reviews, subset: v1}}]
"#,
    );
    let req = Req::get("/").header("x-tag", "a").header("x-tag", "b");
    assert_eq!(routed(&table, req).as_deref(), Some("v1"));
}

#[test]
fn without_headers_matches_when_absent_or_different() {
    let table = table(
        r#"
hosts: [reviews]
http:
- match:
  - withoutHeaders:
      end-user: {exact: jason}
      x-canary: {}
  route: [{destination: {host: reviews, subset: not-jason}}]
"#,
    );
    assert!(routed(&table, Req::get("/")).is_some());
    assert!(routed(&table, Req::get("/").header("end-user", "mallory")).is_some());
    assert!(routed(&table, Req::get("/").header("end-user", "jason")).is_none());
    assert!(routed(&table, Req::get("/").header("x-canary", "1")).is_none());
}

#[test]
fn pseudo_header_names_read_the_request_line() {
    let table = table(
        r#"
hosts: [reviews]
http:
- match: [{headers: {":authority": {prefix: "reviews.shop"}, ":method": {exact: POST}}}]
  route: [{destination: {host: reviews, subset: v1}}]
"#,
    );
    let post = Req::get("/").method(Method::POST);
    assert!(routed(&table, post.authority("reviews.shop:9080")).is_some());
    let get = Req::get("/").authority("reviews.shop");
    assert!(routed(&table, get).is_none());
}

#[test]
fn query_params_match_exact_prefix_regex_and_presence() {
    let table = table(
        r#"
hosts: [reviews]
http:
- match: [{queryParams: {debug: {exact: ""}}}]
  route: [{destination: {host: reviews, subset: empty}}]
- match: [{queryParams: {user: {exact: "jason k"}, page: {regex: "[0-9]+"}}}]
  route: [{destination: {host: reviews, subset: exact}}]
- match: [{queryParams: {lang: {prefix: en}}}]
  route: [{destination: {host: reviews, subset: prefix}}]
- match: [{queryParams: {trace: {}}}]
  route: [{destination: {host: reviews, subset: present}}]
"#,
    );
    let to = |path: &str| routed(&table, Req::get(path));
    assert_eq!(to("/?debug").as_deref(), Some("empty"));
    assert_eq!(to("/?a=1&debug=").as_deref(), Some("empty"));
    assert_eq!(to("/?user=jason%20k&page=3").as_deref(), Some("exact"));
    assert_eq!(to("/?user=jason%20k&page=x"), None);
    assert_eq!(to("/?lang=en-GB").as_deref(), Some("prefix"));
    assert_eq!(to("/?trace=anything").as_deref(), Some("present"));
    // The first value of a repeated parameter counts, as in Envoy.
    assert_eq!(to("/?lang=fr&lang=en"), None);
    assert_eq!(to("/debug"), None, "the path is not the query");
}

#[test]
fn method_authority_scheme_and_port_conditions() {
    let table = table(
        r#"
hosts: [reviews]
http:
- match: [{method: {exact: DELETE}}]
  route: [{destination: {host: reviews, subset: method}}]
- match: [{authority: {exact: reviews.shop.svc.cluster.local}}]
  route: [{destination: {host: reviews, subset: authority}}]
- match: [{scheme: {exact: https}}]
  route: [{destination: {host: reviews, subset: scheme}}]
- match: [{port: 9443}]
  route: [{destination: {host: reviews, subset: port}}]
"#,
    );
    let delete = Req::get("/").method(Method::DELETE);
    assert_eq!(routed(&table, delete).as_deref(), Some("method"));
    let fqdn = Req::get("/").authority("reviews.shop.svc.cluster.local");
    assert_eq!(routed(&table, fqdn).as_deref(), Some("authority"));
    // Istio matches the authority as sent: a port makes it a different value.
    let with_port = Req::get("/").authority("reviews.shop.svc.cluster.local:9080");
    assert_eq!(routed(&table, with_port), None);
    let mut https = Req::get("/");
    https.scheme = "https";
    assert_eq!(routed(&table, https).as_deref(), Some("scheme"));
    assert_eq!(
        routed(&table, Req::get("/").port(9443)).as_deref(),
        Some("port")
    );
}

#[test]
fn source_labels_and_namespace_select_clients() {
    let table = table(
        r#"
hosts: [reviews]
http:
- match: [{sourceLabels: {app: productpage, version: v1}, sourceNamespace: shop}]
  route: [{destination: {host: reviews, subset: v2}}]
- route: [{destination: {host: reviews, subset: v1}}]
"#,
    );
    let from = |ns: Option<&str>, labels: &[(&str, &str)]| {
        routed(&table, Req::get("/").from(ns, labels)).unwrap()
    };
    let product = [("app", "productpage"), ("version", "v1"), ("pod", "x")];
    assert_eq!(from(Some("shop"), &product), "v2");
    assert_eq!(from(Some("other"), &product), "v1");
    assert_eq!(from(None, &product), "v1");
    assert_eq!(from(Some("shop"), &[("app", "productpage")]), "v1");
}

#[test]
fn match_gateways_apply_only_with_mesh_and_then_skip_source_conditions() {
    let table = table(
        r#"
hosts: [reviews]
gateways: [mesh, shop/ingress]
http:
- match: [{gateways: [shop/ingress], uri: {prefix: /}}]
  route: [{destination: {host: reviews, subset: ingress}}]
- match: [{gateways: [mesh], sourceNamespace: nowhere}]
  route: [{destination: {host: reviews, subset: mesh}}]
"#,
    );
    assert_eq!(routed(&table, Req::get("/")).as_deref(), Some("mesh"));
}

#[test]
fn blocks_are_ored_and_the_first_matching_rule_wins() {
    let table = table(
        r#"
hosts: [reviews]
http:
- name: special
  match:
  - {name: by-header, headers: {x-special: {exact: "1"}}}
  - {name: by-path, uri: {prefix: /special}}
  route: [{destination: {host: reviews, subset: special}}]
- name: catch-all
  route: [{destination: {host: reviews, subset: v1}}]
- route: [{destination: {host: reviews, subset: never}}]
"#,
    );
    let by_header = table
        .route_http(&Req::get("/").header("x-special", "1").facts())
        .unwrap();
    assert_eq!(by_header.route_name(), Some("special.by-header"));
    let by_path = table.route_http(&Req::get("/special/x").facts()).unwrap();
    assert_eq!(by_path.route_name(), Some("special.by-path"));
    let other = table.route_http(&Req::get("/other").facts()).unwrap();
    assert_eq!(other.route_name(), Some("catch-all"));
    assert_eq!(routed(&table, Req::get("/other")).as_deref(), Some("v1"));
}

#[test]
fn first_match_wins_across_virtual_services_in_the_order_given() {
    let first = vs_doc(
        "reviews-canary",
        r#"
hosts: [reviews]
http:
- match: [{headers: {x-canary: {exact: "1"}}}]
  route: [{destination: {host: reviews, subset: canary}}]
"#,
    );
    let second = vs_doc(
        "reviews",
        r#"
hosts: [reviews]
http:
- route: [{destination: {host: reviews, subset: v1}}]
"#,
    );
    let table = RouteTable::compile(&parse(&format!("{first}---\n{second}")));
    let canary = table
        .route_http(&Req::get("/").header("x-canary", "1").facts())
        .unwrap();
    assert_eq!(canary.virtual_service(), "shop/reviews-canary");
    let plain = table.route_http(&Req::get("/").facts()).unwrap();
    assert_eq!(plain.virtual_service(), "shop/reviews");

    let reversed = RouteTable::compile(&parse(&format!("{second}---\n{first}")));
    let canary = reversed
        .route_http(&Req::get("/").header("x-canary", "1").facts())
        .unwrap();
    assert_eq!(canary.virtual_service(), "shop/reviews");
}

#[test]
fn unmatched_requests_get_404_only_where_a_rule_applies_to_the_client() {
    let table = table(
        r#"
hosts: [reviews]
http:
- match: [{port: 9080, uri: {prefix: /api}}]
  route: [{destination: {host: reviews, subset: v1}}]
- match: [{sourceNamespace: admin}]
  route: [{destination: {host: reviews, subset: admin}}]
"#,
    );
    let shop = Source {
        namespace: Some("shop"),
        ..Source::default()
    };
    assert!(table.route_http(&Req::get("/other").facts()).is_none());
    assert!(
        table.serves_http(9080, &shop),
        "rule 0 applies on 9080: 404"
    );
    assert!(
        !table.serves_http(8080, &shop),
        "nothing applies on 8080: default route"
    );
    let admin = Source {
        namespace: Some("admin"),
        ..Source::default()
    };
    assert!(table.serves_http(8080, &admin));
}

#[test]
fn jwt_claims_route_requests_with_a_validated_token() {
    let table = table(
        r#"
hosts: [reviews]
http:
- match: [{headers: {"@request.auth.claims.scope": {exact: admin}}}]
  route: [{destination: {host: reviews, subset: admin}}]
- match: [{headers: {"@request.auth.claims.groups": {exact: admin}}}]
  route: [{destination: {host: reviews, subset: admin}}]
- match: [{headers: {"@request.auth.claims.org.tier": {prefix: gold}}}]
  route: [{destination: {host: reviews, subset: gold}}]
- match:
  - headers: {"@request.auth.claims.sub": {}}
    withoutHeaders: {"@request.auth.claims.beta": {exact: "true"}}
  route: [{destination: {host: reviews, subset: signed-in}}]
- route: [{destination: {host: reviews, subset: v1}}]
"#,
    );
    let with = |claims: serde_json::Value| routed(&table, Req::get("/").jwt(claims));
    let to = |subset: &str| Some(subset.to_owned());
    assert_eq!(with(json!({"groups": ["users", "admin"]})), to("admin"));
    assert_eq!(with(json!({"groups": "admin"})), to("admin"));
    assert_eq!(with(json!({"org": {"tier": "gold-plus"}})), to("gold"));
    assert_eq!(with(json!({"sub": "alice"})), to("signed-in"));
    assert_eq!(with(json!({"sub": "alice", "beta": "true"})), to("v1"));
    // Space-delimited claims (`scope`) match by word, as in AuthorizationPolicy; others
    // do not.
    assert_eq!(with(json!({"scope": "read admin"})), to("admin"));
    assert_eq!(with(json!({"groups": "users admin"})), to("v1"));
    // No token, no claims.
    assert_eq!(routed(&table, Req::get("/")), to("v1"));
}

#[test]
fn a_claim_match_naming_no_claim_is_an_error() {
    let table = table_with_problems(
        r#"
hosts: [reviews]
http:
- match: [{headers: {"@request.auth.claims.": {exact: admin}}}]
  route: [{destination: {host: reviews, subset: admin}}]
"#,
    );
    let [problem] = table.errors() else {
        panic!("{:?}", table.errors())
    };
    assert_eq!(
        problem.path,
        "http[0].match[0].headers[@request.auth.claims.]"
    );
    assert!(problem.message.contains("names no claim"), "{problem}");
}

#[test]
fn request_facts_from_hyper_parts() {
    let request = http::Request::builder()
        .method(Method::PUT)
        .uri("/reviews/1?x=y")
        .header("host", "reviews:9080")
        .body(())
        .unwrap();
    let (parts, ()) = request.into_parts();
    let facts = RequestFacts::from_parts(&parts, 9080, Source::default());
    assert_eq!(facts.authority, "reviews:9080");
    assert_eq!(facts.scheme, "http");
    assert_eq!(facts.path_only(), "/reviews/1");
    assert_eq!(facts.query(), Some("x=y"));
    let http2 = http::Request::builder()
        .uri("https://reviews.shop:9443/a")
        .body(())
        .unwrap();
    let (parts, ()) = http2.into_parts();
    let facts = RequestFacts::from_parts(&parts, 9443, Source::default());
    assert_eq!(
        (facts.authority, facts.scheme, facts.path),
        ("reviews.shop:9443", "https", "/a")
    );
}
