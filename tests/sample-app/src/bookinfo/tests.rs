//! bookinfo end to end in one process: real servers on loopback ports calling each other.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;
use tokio::net::TcpListener;

use super::details::Details;
use super::productpage::{Productpage, ProductpageConfig};
use super::ratings::{Ratings, RatingsConfig, RatingsMode};
use super::reviews::{RATINGS_UNAVAILABLE, Reviews, ReviewsConfig};
use crate::web::testing::{closed_addr, get, send, spawn};
use crate::web::{self, Body, Handler};

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

async fn ratings() -> SocketAddr {
    spawn(Ratings::new(RatingsConfig {
        mode: RatingsMode::Normal,
        delay: Duration::ZERO,
    }))
    .await
}

async fn reviews(version: &str, ratings: SocketAddr) -> SocketAddr {
    let env = |k: &str| (k == "RATINGS_HOSTNAME").then(|| "unused".to_owned());
    let mut config = ReviewsConfig::from_env(version, &format!("reviews-{version}-pod"), &env);
    if let Some(call) = config.ratings.as_mut() {
        call.base_url = url(ratings);
    }
    spawn(Reviews::new(config)).await
}

fn productpage_config(
    details: SocketAddr,
    reviews: SocketAddr,
    ratings: SocketAddr,
) -> ProductpageConfig {
    let mut config = ProductpageConfig::from_env(&|_| None);
    config.details_url = url(details);
    config.reviews_url = url(reviews);
    config.ratings_url = url(ratings);
    config
}

/// A whole bookinfo with the given reviews version; returns productpage's address.
async fn bookinfo(version: &str) -> SocketAddr {
    let ratings = ratings().await;
    let reviews = reviews(version, ratings).await;
    let details = spawn(Details).await;
    spawn(Productpage::new(productpage_config(
        details, reviews, ratings,
    )))
    .await
}

/// `(end-user, x-request-id)` of one request.
type Seen = (Option<String>, Option<String>);

/// Records selected request headers and answers with a fixed ratings body.
#[derive(Debug, Default, Clone)]
struct RecordingRatings {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Handler for RecordingRatings {
    async fn handle(&self, req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
        let get = |name: &str| web::header_str(req.headers(), name).map(str::to_owned);
        self.seen
            .lock()
            .unwrap()
            .push((get("end-user"), get("x-request-id")));
        web::json(
            StatusCode::OK,
            &json!({"id": 0, "ratings": {"Reviewer1": 1, "Reviewer2": 2}}),
        )
    }
}

/// Answers `503` to its first `failures` requests, then a reviews body; counts requests.
#[derive(Debug, Default, Clone)]
struct FlakyReviews {
    failures: usize,
    calls: Arc<Mutex<usize>>,
}

impl Handler for FlakyReviews {
    async fn handle(&self, _req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
        let call = {
            let mut calls = self.calls.lock().unwrap();
            *calls += 1;
            *calls
        };
        if call <= self.failures {
            web::json(StatusCode::SERVICE_UNAVAILABLE, &json!({"error": "down"}))
        } else {
            web::json(
                StatusCode::OK,
                &json!({"id": "0", "podname": "flaky", "clustername": "null", "reviews": []}),
            )
        }
    }
}

#[tokio::test]
async fn details_serves_json_and_rejects_non_numeric_ids() {
    let addr = spawn(Details).await;
    let ok = get(addr, "/details/3", &[]).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.json()["id"], 3);
    assert_eq!(ok.json()["ISBN-13"], "123-1234567890");
    let bad = get(addr, "/details/abc", &[]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        bad.json(),
        json!({"error": "please provide numeric product ID"})
    );
    assert_eq!(
        get(addr, "/health", &[]).await.json(),
        json!({"status": "Details is healthy"})
    );
}

#[tokio::test]
async fn ratings_serves_fixed_ratings_and_rejects_bad_ids() {
    let addr = ratings().await;
    let ok = get(addr, "/ratings/0", &[]).await;
    assert_eq!(
        ok.json(),
        json!({"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}})
    );
    assert_eq!(
        get(addr, "/ratings/x", &[]).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        get(addr, "/health", &[]).await.json(),
        json!({"status": "Ratings is healthy"})
    );
}

#[tokio::test]
async fn reviews_v1_does_not_rate_and_reports_its_pod() {
    // The ratings address is closed: v1 must not even try it.
    let addr = reviews("v1", closed_addr().await).await;
    let body = get(addr, "/reviews/0", &[]).await.json();
    assert_eq!(body["id"], "0");
    assert_eq!(body["podname"], "reviews-v1-pod");
    assert_eq!(body["clustername"], "null");
    assert!(body["reviews"][0].get("rating").is_none());
    assert_eq!(
        get(addr, "/health", &[]).await.json(),
        json!({"status": "Reviews is healthy"})
    );
}

#[tokio::test]
async fn reviews_v2_rates_with_black_stars_from_ratings() {
    let addr = reviews("v2", ratings().await).await;
    let body = get(addr, "/reviews/0", &[]).await.json();
    assert_eq!(
        body["reviews"][0]["rating"],
        json!({"stars": 5, "color": "black"})
    );
    assert_eq!(
        body["reviews"][1]["rating"],
        json!({"stars": 4, "color": "black"})
    );
}

#[tokio::test]
async fn reviews_v2_with_ratings_down_shows_unavailable_text() {
    let addr = reviews("v2", closed_addr().await).await;
    let answer = get(addr, "/reviews/0", &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    for review in body["reviews"].as_array().unwrap() {
        assert_eq!(review["rating"], json!({"error": RATINGS_UNAVAILABLE}));
    }
}

#[tokio::test]
async fn productpage_renders_details_reviews_and_red_stars() {
    let addr = bookinfo("v3").await;
    let page = get(addr, "/productpage", &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    let html = page.text();
    assert!(html.contains("<title>Simple Bookstore App</title>"));
    assert!(html.contains("The Comedy of Errors"));
    assert!(html.contains("Book Details"));
    assert!(html.contains("<dt>Publisher:</dt>PublisherA"));
    assert!(html.contains("An extremely entertaining play by Shakespeare."));
    assert!(html.contains("<font color=\"red\">"));
    assert_eq!(html.matches("glyphicon glyphicon-star\"").count(), 9);
    assert_eq!(html.matches("glyphicon-star-empty").count(), 1);
    assert!(html.contains("Reviews served by:</dt>\n<u>reviews-v3-pod</u>"));
    assert!(html.contains("Sign in"));
}

#[tokio::test]
async fn productpage_shows_rating_error_when_ratings_is_down() {
    let reviews = reviews("v2", closed_addr().await).await;
    let details = spawn(Details).await;
    let addr = spawn(Productpage::new(productpage_config(
        details,
        reviews,
        closed_addr().await,
    )))
    .await;
    let html = get(addr, "/productpage", &[]).await.text();
    assert!(html.contains("Ratings service is currently unavailable"));
    assert!(!html.contains("glyphicon-star"));
}

#[tokio::test]
async fn productpage_shows_both_errors_when_upstreams_are_down() {
    let down = closed_addr().await;
    let addr = spawn(Productpage::new(productpage_config(down, down, down))).await;
    let html = get(addr, "/productpage", &[]).await.text();
    assert!(
        html.contains(
            "<h4 class=\"text-center text-primary\">Error fetching product details!</h4>"
        )
    );
    assert!(html.contains("Sorry, product details are currently unavailable for this book."));
    assert!(
        html.contains(
            "<h4 class=\"text-center text-primary\">Error fetching product reviews!</h4>"
        )
    );
    assert!(html.contains("Sorry, product reviews are currently unavailable for this book."));
    let api = get(addr, "/api/v1/products/0", &[]).await;
    assert_eq!(api.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        api.json(),
        json!({"error": "Sorry, product details are currently unavailable for this book."})
    );
}

#[tokio::test]
async fn productpage_tries_hanging_reviews_twice_then_shows_reviews_error() {
    // A reviews that accepts connections and never answers; count the attempts.
    let hang = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let held = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = hang.accept().await {
            held.lock().unwrap().push(stream);
        }
    });
    let mut config = productpage_config(spawn(Details).await, hang_addr, closed_addr().await);
    config.reviews_timeout = Duration::from_millis(300);
    let addr = spawn(Productpage::new(config)).await;

    let start = Instant::now();
    let html = get(addr, "/productpage", &[]).await.text();
    assert!(html.contains("Error fetching product reviews!"));
    assert!(html.contains("Book Details"), "details still shown");
    assert_eq!(accepted.lock().unwrap().len(), 2, "one try and one retry");
    assert!(
        start.elapsed() >= Duration::from_millis(600),
        "each attempt waits its timeout"
    );
}

#[tokio::test]
async fn productpage_retries_a_non_200_reviews_answer_once() {
    let flaky = FlakyReviews {
        failures: 1,
        ..FlakyReviews::default()
    };
    let calls = flaky.calls.clone();
    let reviews = spawn(flaky).await;
    let addr = spawn(Productpage::new(productpage_config(
        spawn(Details).await,
        reviews,
        closed_addr().await,
    )))
    .await;
    let html = get(addr, "/productpage", &[]).await.text();
    assert!(html.contains("Book Reviews"));
    assert!(!html.contains("Error fetching product reviews!"));
    assert_eq!(*calls.lock().unwrap(), 2);
}

#[tokio::test]
async fn reviews_api_passes_the_last_failing_status_through() {
    let flaky = FlakyReviews {
        failures: 10,
        ..FlakyReviews::default()
    };
    let calls = flaky.calls.clone();
    let reviews = spawn(flaky).await;
    let addr = spawn(Productpage::new(productpage_config(
        spawn(Details).await,
        reviews,
        closed_addr().await,
    )))
    .await;
    let api = get(addr, "/api/v1/products/0/reviews", &[]).await;
    assert_eq!(api.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        api.json(),
        json!({"error": "Sorry, product reviews are currently unavailable for this book."})
    );
    assert_eq!(*calls.lock().unwrap(), 2);
}

#[tokio::test]
async fn signed_in_user_reaches_ratings_as_end_user_with_trace_headers() {
    let recorder = RecordingRatings::default();
    let seen = recorder.seen.clone();
    let ratings = spawn(recorder).await;
    let reviews = reviews("v3", ratings).await;
    let addr = spawn(Productpage::new(productpage_config(
        spawn(Details).await,
        reviews,
        ratings,
    )))
    .await;

    let page = get(
        addr,
        "/productpage",
        &[("cookie", "user=jason"), ("x-request-id", "req-1")],
    )
    .await;
    let html = page.text();
    assert!(html.contains("<span style=\"padding-left: 5px;\">jason</span>"));
    assert!(html.contains("<a href=\"logout\">sign out</a>"));
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [(Some("jason".to_owned()), Some("req-1".to_owned()))]
    );

    // Not signed in: no end-user, even if the client sent one.
    get(addr, "/productpage", &[("end-user", "mallory")]).await;
    assert_eq!(seen.lock().unwrap()[1], (None, None));
}

#[tokio::test]
async fn login_sets_user_cookie_and_logout_clears_it() {
    let down = closed_addr().await;
    let addr = spawn(Productpage::new(productpage_config(down, down, down))).await;
    let req = Request::post(format!("http://{addr}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from("username=jason&passwd=secret")))
        .unwrap();
    let login = send(req).await;
    assert_eq!(login.status, StatusCode::FOUND);
    assert_eq!(login.headers["location"], "/productpage");
    assert!(
        login.headers["set-cookie"]
            .to_str()
            .unwrap()
            .starts_with("user=jason;")
    );

    let logout = get(addr, "/logout", &[("cookie", "user=jason")]).await;
    assert_eq!(logout.status, StatusCode::FOUND);
    assert_eq!(logout.headers["location"], "/productpage");
    assert!(
        logout.headers["set-cookie"]
            .to_str()
            .unwrap()
            .starts_with("user=;")
    );
}

#[tokio::test]
async fn products_api_serves_list_details_reviews_and_ratings() {
    let addr = bookinfo("v2").await;
    let list = get(addr, "/api/v1/products", &[]).await;
    assert_eq!(list.json()[0]["title"], "The Comedy of Errors");
    let details = get(addr, "/api/v1/products/0", &[]).await;
    assert_eq!(details.status, StatusCode::OK);
    assert!(
        details
            .text()
            .starts_with(r#"{"id":0,"author":"William Shakespeare""#),
        "passed through in order"
    );
    let reviews = get(addr, "/api/v1/products/0/reviews", &[]).await.json();
    assert_eq!(reviews["reviews"][1]["rating"]["stars"], 4);
    let ratings = get(addr, "/api/v1/products/0/ratings", &[]).await.json();
    assert_eq!(ratings["ratings"]["Reviewer1"], 5);
    assert_eq!(
        get(addr, "/health", &[]).await.json(),
        json!({"status": "Productpage is healthy"})
    );
    let index = get(addr, "/", &[]).await;
    assert!(index.text().contains("href=\"/productpage?u=normal\""));
}
