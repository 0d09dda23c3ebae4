//! bookinfo `details` (the Ruby service): static book details for any numeric id.

use std::net::SocketAddr;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::json;

use super::parse_product_id;
use crate::web::{Body, Handler, json, not_found};

/// The details of a book, in the field order the Ruby service writes them.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct BookDetails {
    pub(crate) id: i64,
    pub(crate) author: &'static str,
    pub(crate) year: u32,
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) pages: u32,
    pub(crate) publisher: &'static str,
    pub(crate) language: &'static str,
    #[serde(rename = "ISBN-10")]
    pub(crate) isbn10: &'static str,
    #[serde(rename = "ISBN-13")]
    pub(crate) isbn13: &'static str,
}

impl BookDetails {
    /// The one book every id describes.
    pub(crate) fn for_id(id: i64) -> Self {
        Self {
            id,
            author: "William Shakespeare",
            year: 1595,
            kind: "paperback",
            pages: 200,
            publisher: "PublisherA",
            language: "English",
            isbn10: "1234567890",
            isbn13: "123-1234567890",
        }
    }
}

/// The details handler.
#[derive(Debug, Default)]
pub(crate) struct Details;

impl Handler for Details {
    async fn handle(&self, req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return not_found();
        }
        let path = req.uri().path();
        if path == "/health" {
            return json(StatusCode::OK, &json!({"status": "Details is healthy"}));
        }
        match path.strip_prefix("/details/") {
            Some(raw) => match parse_product_id(raw) {
                Some(id) => json(StatusCode::OK, &BookDetails::for_id(id)),
                None => json(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "please provide numeric product ID"}),
                ),
            },
            None => not_found(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_json_has_the_original_fields_in_order() {
        let text = serde_json::to_string(&BookDetails::for_id(0)).unwrap();
        assert_eq!(
            text,
            r#"{"id":0,"author":"William Shakespeare","year":1595,"type":"paperback","pages":200,"publisher":"PublisherA","language":"English","ISBN-10":"1234567890","ISBN-13":"123-1234567890"}"#
        );
    }
}
