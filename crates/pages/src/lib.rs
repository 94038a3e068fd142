//! The auction pages. The files live in `web/` (plain HTML, CSS and JS, no
//! build step) and are compiled into the edge binaries, so a replica needs
//! nothing on disk. `GET /` serves the transport's page with its settings
//! injected (as data attributes: the pages run under a
//! Content-Security-Policy that allows no inline script or style);
//! `GET /assets/{name}` serves the shared files.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One page for both transports; placeholders name the transport.
const PAGE: &str = include_str!("../../../web/auction.html");
/// Pages that need no settings: path, file.
const STATIC_PAGES: &[(&str, &str)] = &[
    (
        "/catalogue.html",
        include_str!("../../../web/catalogue.html"),
    ),
    ("/compare.html", include_str!("../../../web/compare.html")),
    // Acts through the bidder's /admin/... routes with an admin token.
    ("/admin.html", include_str!("../../../web/admin.html")),
];
const JS: &str = "text/javascript; charset=utf-8";
const SVG: &str = "image/svg+xml";
/// Served under `/assets/`: name, content type, body.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../../web/app.css"),
    ),
    ("common.js", JS, include_str!("../../../web/common.js")),
    // The auction client library (an ES module, published from
    // `clients/js`), and the auction page's use of it.
    (
        "auction-client.js",
        JS,
        include_str!("../../../clients/js/auction-client.js"),
    ),
    (
        "auction-page.js",
        JS,
        include_str!("../../../web/auction-page.js"),
    ),
    ("sse.js", JS, include_str!("../../../web/sse.js")),
    ("ws.js", JS, include_str!("../../../web/ws.js")),
    // The SharedWorker that holds one connection per transport for every
    // auction tab of a browser.
    (
        "shared-stream.js",
        JS,
        include_str!("../../../web/shared-stream.js"),
    ),
    (
        "catalogue.js",
        JS,
        include_str!("../../../web/catalogue.js"),
    ),
    ("compare.js", JS, include_str!("../../../web/compare.js")),
    ("admin.js", JS, include_str!("../../../web/admin.js")),
    ("favicon.svg", SVG, include_str!("../../../web/favicon.svg")),
    // The simulator's demo lots (`image_url` "/assets/lot-….svg").
    (
        "lot-keyboard.svg",
        SVG,
        include_str!("../../../web/lot-keyboard.svg"),
    ),
    (
        "lot-watch.svg",
        SVG,
        include_str!("../../../web/lot-watch.svg"),
    ),
    (
        "lot-camera.svg",
        SVG,
        include_str!("../../../web/lot-camera.svg"),
    ),
    ("lot-pen.svg", SVG, include_str!("../../../web/lot-pen.svg")),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Sse,
    Ws,
}

/// The page for `transport`, with the transport and the bidder's URL in
/// data attributes of `<html>` (`data-transport`, `data-bidder-url`).
pub fn page(transport: Transport, bidder_url: &str) -> String {
    let (name, title) = match transport {
        Transport::Sse => ("sse", "Server-Sent Events"),
        Transport::Ws => ("ws", "WebSocket"),
    };
    PAGE.replace("__TRANSPORT_NAME__", title)
        .replace("__TRANSPORT__", name)
        .replace("__BIDDER_URL__", &attribute_text(bidder_url))
}

/// `text` made safe inside a double-quoted HTML attribute.
fn attribute_text(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            c => escaped.push(c),
        }
    }
    escaped
}

fn html_response(body: String) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// `GET /` (the transport's auction page), the catalogue and comparison
/// pages, `GET /favicon.ico` and `GET /assets/{name}`.
pub fn routes(transport: Transport, bidder_url: &str) -> Router {
    let auction_page = page(transport, bidder_url);
    let mut router = Router::new().route(
        "/",
        get(move || {
            let body = auction_page.clone();
            async move { html_response(body) }
        }),
    );
    for (path, body) in STATIC_PAGES {
        router = router.route(
            path,
            get(move || async move { html_response((*body).to_owned()) }),
        );
    }
    router
        // Asked for by browsers on pages without <link rel="icon">.
        .route(
            "/favicon.ico",
            get(|| asset(Path("favicon.svg".to_owned()))),
        )
        .route("/assets/{name}", get(asset))
}

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(file, _, _)| *file == name) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    #[test]
    fn config_is_injected_and_escaped() {
        let html = page(Transport::Ws, "http://x/\"><script>&");
        assert!(html.contains(r#"data-transport="ws""#));
        assert!(html.contains(r#"data-bidder-url="http://x/&quot;&gt;&lt;script&gt;&amp;""#));
        assert!(!html.contains("__"), "every placeholder is filled");
        assert!(html.contains("assets/ws.js") && html.contains("WebSocket"));
    }

    #[test]
    fn no_page_has_inline_script_style_or_handler() {
        let pages = [page(Transport::Sse, ""), page(Transport::Ws, "")]
            .into_iter()
            .chain(STATIC_PAGES.iter().map(|(_, body)| (*body).to_owned()));
        for page in pages {
            let lower = page.to_ascii_lowercase();
            for tag in lower.split('<').skip(1) {
                let tag = tag.split('>').next().unwrap_or_default();
                let mut words = tag.split_whitespace();
                let name = words.next().unwrap_or_default();
                assert!(name != "style", "an inline <style>");
                if name == "script" {
                    assert!(tag.contains(" src="), "an inline script: <{tag}>");
                }
                for attribute in words {
                    assert!(
                        !attribute.starts_with("style="),
                        "a style attribute: <{tag}>"
                    );
                    assert!(
                        !(attribute.starts_with("on") && attribute.contains('=')),
                        "an inline event handler: <{tag}>"
                    );
                    assert!(
                        !attribute.contains("javascript:"),
                        "a javascript: URL: <{tag}>"
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn serves_the_page_and_every_asset_it_references() {
        let app = routes(Transport::Sse, "");
        let response = app
            .clone()
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let pages = [page(Transport::Sse, ""), page(Transport::Ws, "")]
            .into_iter()
            .chain(STATIC_PAGES.iter().map(|(_, body)| (*body).to_owned()));
        for page in pages {
            for reference in page.split("\"assets/").skip(1) {
                let name = reference.split('"').next().unwrap();
                let uri = format!("/assets/{name}");
                let response = app
                    .clone()
                    .oneshot(Request::get(&uri).body(Body::empty()).unwrap())
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200, "{uri}");
            }
        }
        // Every module a script imports and every worker it starts is
        // served too.
        for (_, _, body) in ASSETS {
            let imports = body.split("from \"./").skip(1);
            let workers = body.split("\"assets/").skip(1);
            for reference in imports.chain(workers) {
                let name = reference.split('"').next().unwrap();
                let uri = format!("/assets/{name}");
                let response = app
                    .clone()
                    .oneshot(Request::get(&uri).body(Body::empty()).unwrap())
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200, "{uri}");
            }
        }
        let missing = app
            .oneshot(Request::get("/assets/nope.js").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(missing.status(), 404);
    }
}
