//! The auction pages. The files live in `web/` (plain HTML, CSS and JS, no
//! build step) and are compiled into the edge binaries, so a replica needs
//! nothing on disk. `GET /` serves the transport's page with its settings
//! injected; `GET /assets/{name}` serves the shared files.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One page for both transports; placeholders name the transport.
const PAGE: &str = include_str!("../../../web/auction.html");
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../../web/app.css"),
    ),
    (
        "common.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web/common.js"),
    ),
    (
        "sse.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web/sse.js"),
    ),
    (
        "ws.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web/ws.js"),
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Sse,
    Ws,
}

/// The page for `transport`, with `{"transport", "bidderUrl"}` injected.
pub fn page(transport: Transport, bidder_url: &str) -> String {
    let (name, title) = match transport {
        Transport::Sse => ("sse", "Server-Sent Events"),
        Transport::Ws => ("ws", "WebSocket"),
    };
    let config = serde_json::json!({ "transport": name, "bidderUrl": bidder_url }).to_string();
    PAGE.replace("__TRANSPORT_NAME__", title)
        .replace("__TRANSPORT__", name)
        // Inside <script>, "</" could end the element: escape it.
        .replace("__AUCTION_CONFIG__", &config.replace("</", "<\\/"))
}

/// `GET /` and `GET /assets/{name}`.
pub fn routes(transport: Transport, bidder_url: &str) -> Router {
    let html = page(transport, bidder_url);
    Router::new()
        .route(
            "/",
            get(move || {
                let html = html.clone();
                async move {
                    (
                        [
                            (
                                header::CONTENT_TYPE,
                                HeaderValue::from_static("text/html; charset=utf-8"),
                            ),
                            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                        ],
                        html,
                    )
                }
            }),
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
        let html = page(Transport::Ws, "http://x/</script>");
        assert!(html.contains(r#""transport":"ws""#));
        assert!(html.contains(r#"http://x/<\/script>"#));
        assert!(!html.contains("__"), "every placeholder is filled");
        assert!(html.contains("assets/ws.js") && html.contains("WebSocket"));
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
        for page in [page(Transport::Sse, ""), page(Transport::Ws, "")] {
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
        let missing = app
            .oneshot(Request::get("/assets/nope.js").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(missing.status(), 404);
    }
}
