//! HTML of productpage: the index page and the product page, following the original Bootstrap
//! templates (`<font color>` stars with glyphicons, `Error fetching product …!` panels).

use std::fmt::Write as _;

use serde_json::Value;

use super::{DETAILS_UNAVAILABLE, Fetched, Product, ProductpageConfig, REVIEWS_UNAVAILABLE};

/// Escapes text for HTML element content and attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON value as the template prints it: strings bare, anything else as JSON text.
fn field(value: &Value, key: &str) -> String {
    match value.get(key) {
        Some(Value::String(s)) => escape(s),
        Some(Value::Null) | None => String::new(),
        Some(other) => escape(&other.to_string()),
    }
}

const HEAD: &str = "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n\
<meta http-equiv=\"X-UA-Compatible\" content=\"IE=edge\">\n\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1.0\">\n\
<link rel=\"stylesheet\" href=\"static/bootstrap/css/bootstrap.min.css\">\n";

/// The index page: links to the product page as a normal and a test user, and the service table.
pub(crate) fn index_page(config: &ProductpageConfig) -> String {
    let mut out = String::from(HEAD);
    out.push_str("<title>Simple Bookstore App</title>\n</head>\n<body>\n");
    out.push_str("<div class=\"container\">\n<h3>Hello! This is a simple bookstore application consisting of three services as shown below</h3>\n");
    out.push_str("<table class=\"table table-condensed table-bordered table-hover\">\n");
    out.push_str("<tr><th>name</th><th>endpoint</th><th>children</th></tr>\n");
    let _ = writeln!(
        out,
        "<tr><td>{}</td><td>details</td><td>details, reviews</td></tr>",
        escape(&config.details_url)
    );
    let _ = writeln!(
        out,
        "<tr><td>{}</td><td>details</td><td></td></tr>",
        escape(&config.details_url)
    );
    let _ = writeln!(
        out,
        "<tr><td>{}</td><td>reviews</td><td>ratings</td></tr>",
        escape(&config.reviews_url)
    );
    let _ = writeln!(
        out,
        "<tr><td>{}</td><td>ratings</td><td></td></tr>",
        escape(&config.ratings_url)
    );
    out.push_str("</table>\n<p><h4>Click on one of the links below to auto generate a request to the backend as a real user or a tester</h4></p>\n");
    out.push_str("<p><a href=\"/productpage?u=normal\">Normal user</a></p>\n");
    out.push_str("<p><a href=\"/productpage?u=test\">Test user</a></p>\n");
    out.push_str("</div>\n</body>\n</html>\n");
    out
}

/// The navigation bar: the signed-in user with a sign-out link, or the sign-in form.
fn nav(out: &mut String, user: Option<&str>) {
    out.push_str(
        "<nav class=\"navbar navbar-inverse navbar-static-top\">\n<div class=\"container\">\n",
    );
    out.push_str("<div class=\"navbar-header\"><a class=\"navbar-brand\" href=\"#\">BookInfo Sample</a></div>\n");
    match user {
        Some(user) => {
            let _ = writeln!(
                out,
                "<p class=\"navbar-text navbar-right\"><i class=\"glyphicon glyphicon-user\" aria-hidden=\"true\"></i>\
                 <span style=\"padding-left: 5px;\">{}</span> ( <a href=\"logout\">sign out</a> )</p>",
                escape(user)
            );
        }
        None => {
            out.push_str("<button type=\"button\" class=\"btn btn-default navbar-btn navbar-right\" data-toggle=\"modal\" href=\"#login-modal\">Sign in</button>\n");
        }
    }
    out.push_str("</div>\n</nav>\n");
    if user.is_none() {
        out.push_str("<div id=\"login-modal\" class=\"modal fade\" role=\"dialog\">\n<div class=\"modal-dialog\"><div class=\"modal-content\">\n");
        out.push_str("<div class=\"modal-header\"><h4 class=\"modal-title\">Please sign in</h4></div>\n<div class=\"modal-body\">\n");
        out.push_str("<form method=\"post\" action=\"login\" name=\"login_form\">\n");
        out.push_str("<p><input type=\"text\" class=\"span3\" name=\"username\" id=\"username\" placeholder=\"User Name\"></p>\n");
        out.push_str("<p><input type=\"password\" class=\"span3\" name=\"passwd\" placeholder=\"Password\"></p>\n");
        out.push_str("<p><button type=\"submit\" class=\"btn btn-primary\">Sign in</button></p>\n");
        out.push_str("</form>\n</div>\n</div></div>\n</div>\n");
    }
}

/// One review's rating: coloured stars (full then empty, five in all) or the error text.
pub(crate) fn rating_html(rating: &Value) -> String {
    if let Some(stars) = rating
        .get("stars")
        .and_then(Value::as_i64)
        .filter(|s| *s > 0)
    {
        let full = stars.min(5);
        let color = rating
            .get("color")
            .and_then(Value::as_str)
            .unwrap_or("black");
        let mut out = format!("<font color=\"{}\">\n", escape(color));
        for _ in 0..full {
            out.push_str("<span class=\"glyphicon glyphicon-star\"></span>\n");
        }
        for _ in full..5 {
            out.push_str("<span class=\"glyphicon glyphicon-star-empty\"></span>\n");
        }
        out.push_str("</font>\n");
        out
    } else if let Some(error) = rating.get("error").and_then(Value::as_str) {
        format!("<p><i>{}</i></p>\n", escape(error))
    } else {
        String::new()
    }
}

fn details_panel(out: &mut String, details: &Fetched) {
    out.push_str("<div class=\"col-md-6\">\n");
    match details {
        Fetched::Ok { value, .. } => {
            out.push_str("<h4 class=\"text-center text-primary\">Book Details</h4>\n<dl>\n");
            for (label, key) in [
                ("Type", "type"),
                ("Pages", "pages"),
                ("Publisher", "publisher"),
                ("Language", "language"),
                ("ISBN-10", "ISBN-10"),
                ("ISBN-13", "ISBN-13"),
            ] {
                let _ = writeln!(out, "<dt>{label}:</dt>{}", field(value, key));
            }
            out.push_str("</dl>\n");
        }
        Fetched::Failed(_) => {
            out.push_str(
                "<h4 class=\"text-center text-primary\">Error fetching product details!</h4>\n",
            );
            let _ = writeln!(out, "<p>{DETAILS_UNAVAILABLE}</p>");
        }
    }
    out.push_str("</div>\n");
}

fn reviews_panel(out: &mut String, reviews: &Fetched) {
    out.push_str("<div class=\"col-md-6\">\n");
    match reviews {
        Fetched::Ok { value, .. } => {
            out.push_str("<h4 class=\"text-center text-primary\">Book Reviews</h4>\n");
            let podname = field(value, "podname");
            let clustername = value
                .get("clustername")
                .and_then(Value::as_str)
                .unwrap_or("null");
            let list = value
                .get("reviews")
                .and_then(Value::as_array)
                .map(Vec::as_slice);
            for review in list.unwrap_or_default() {
                out.push_str("<blockquote>\n");
                let _ = writeln!(out, "<p>{}</p>", field(review, "text"));
                let _ = writeln!(out, "<small>{}</small>", field(review, "reviewer"));
                if let Some(rating) = review.get("rating") {
                    out.push_str(&rating_html(rating));
                }
                out.push_str("</blockquote>\n");
                let _ = write!(out, "<dl>\n<dt>Reviews served by:</dt>\n<u>{podname}</u>\n");
                if clustername != "null" {
                    let _ = writeln!(out, "on cluster <u>{}</u>", escape(clustername));
                }
                out.push_str("</dl>\n");
            }
        }
        Fetched::Failed(_) => {
            out.push_str(
                "<h4 class=\"text-center text-primary\">Error fetching product reviews!</h4>\n",
            );
            let _ = writeln!(out, "<p>{REVIEWS_UNAVAILABLE}</p>");
        }
    }
    out.push_str("</div>\n");
}

/// The product page.
pub(crate) fn product_page(
    product: &Product,
    details: &Fetched,
    reviews: &Fetched,
    user: Option<&str>,
) -> String {
    let mut out = String::from(HEAD);
    out.push_str("<title>Simple Bookstore App</title>\n</head>\n<body>\n");
    nav(&mut out, user);
    out.push_str(
        "<div class=\"container-fluid\">\n<div class=\"row\">\n<div class=\"col-md-12\">\n",
    );
    let _ = writeln!(
        out,
        "<h3 class=\"text-center text-primary\">{}</h3>",
        escape(product.title)
    );
    // The description is HTML on purpose (autoescape false in the original template).
    let _ = writeln!(out, "<p>Summary: {}</p>", product.description_html);
    out.push_str("</div>\n</div>\n<div class=\"row\">\n");
    details_panel(&mut out, details);
    reviews_panel(&mut out, reviews);
    out.push_str("</div>\n</div>\n</body>\n</html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::super::products;
    use super::*;
    use bytes::Bytes;
    use http::StatusCode;
    use serde_json::json;

    fn ok(value: Value) -> Fetched {
        Fetched::Ok {
            raw: Bytes::from(value.to_string()),
            value,
        }
    }

    #[test]
    fn four_red_stars_render_four_full_and_one_empty_glyph() {
        let html = rating_html(&json!({"stars": 4, "color": "red"}));
        assert!(html.starts_with("<font color=\"red\">"));
        assert_eq!(html.matches("glyphicon glyphicon-star\"").count(), 4);
        assert_eq!(html.matches("glyphicon-star-empty").count(), 1);
    }

    #[test]
    fn rating_error_renders_its_text() {
        let html = rating_html(&json!({"error": "Ratings service is currently unavailable"}));
        assert!(html.contains("Ratings service is currently unavailable"));
        assert!(!html.contains("glyphicon"));
    }

    #[test]
    fn failed_upstreams_render_both_error_panels() {
        let [product] = products();
        let failed = Fetched::Failed(StatusCode::INTERNAL_SERVER_ERROR);
        let page = product_page(&product, &failed, &failed, None);
        assert!(page.contains("<title>Simple Bookstore App</title>"));
        assert!(page.contains(
            "<h4 class=\"text-center text-primary\">Error fetching product details!</h4>"
        ));
        assert!(page.contains(DETAILS_UNAVAILABLE));
        assert!(page.contains(
            "<h4 class=\"text-center text-primary\">Error fetching product reviews!</h4>"
        ));
        assert!(page.contains(REVIEWS_UNAVAILABLE));
        assert!(page.contains("Sign in"));
    }

    #[test]
    fn page_shows_details_reviews_podname_and_escaped_user() {
        let [product] = products();
        let details = ok(json!({"type": "paperback", "pages": 200, "ISBN-10": "1234567890"}));
        let reviews = ok(json!({
            "id": "0", "podname": "reviews-v2-x", "clustername": "null",
            "reviews": [{"reviewer": "Reviewer1", "text": "Fun <b>", "rating": {"stars": 5, "color": "black"}}]
        }));
        let page = product_page(&product, &details, &reviews, Some("jason<"));
        assert!(page.contains("The Comedy of Errors"));
        assert!(page.contains("<b>William Shakespeare's</b>"));
        assert!(page.contains("<dt>Pages:</dt>200"));
        assert!(page.contains("<dt>Type:</dt>paperback"));
        assert!(page.contains("Fun &lt;b&gt;"));
        assert!(page.contains("<small>Reviewer1</small>"));
        assert!(page.contains("Reviews served by:</dt>\n<u>reviews-v2-x</u>"));
        assert!(page.contains("<font color=\"black\">"));
        assert!(page.contains("<span style=\"padding-left: 5px;\">jason&lt;</span>"));
        assert!(page.contains("<a href=\"logout\">sign out</a>"));
        assert!(!page.contains("name=\"login_form\""));
    }
}
