//! One trace covers a bid's POST, its Redis append and the fan-out on each
//! edge: the trace context travels inside the Redis event. Spans are
//! received by an in-process OTLP/HTTP receiver.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use eventsource_stream::Eventsource;
use futures_util::{SinkExt, StreamExt};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use test_support::{RedisServer, ServiceProcess};

/// (service name, span name, trace id, span id, parent span id, linked
/// span ids), hex.
type Span = (String, String, String, String, String, Vec<String>);

async fn receiver() -> (String, Arc<Mutex<Vec<Span>>>) {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let app = axum::Router::new()
        .route("/v1/traces", post(collect))
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, spans)
}

async fn collect(State(spans): State<Arc<Mutex<Vec<Span>>>>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut spans = spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(name) => Some(name.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push((
                    service.clone(),
                    span.name.clone(),
                    hex(&span.trace_id),
                    hex(&span.span_id),
                    hex(&span.parent_span_id),
                    span.links.iter().map(|link| hex(&link.span_id)).collect(),
                ));
            }
        }
    }
    Vec::new() // an empty ExportTraceServiceResponse
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_from_the_post_to_every_edge() {
    let (otlp, spans) = receiver().await;
    let redis = RedisServer::start();
    let otel = |extra: &[(&'static str, String)]| {
        let mut env = vec![
            ("AUCTION_REDIS_URL", redis.url()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.clone()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
            test_support::session_secret_env(),
        ];
        env.extend(extra.iter().cloned());
        env
    };
    let bidder = ServiceProcess::start("bidder", &otel(&[("AUCTION_SIMULATE", "false".into())]));
    let sse = ServiceProcess::start("sse-edge", &otel(&[]));
    let ws = ServiceProcess::start("ws-edge", &otel(&[("AUCTION_BIDDER_URL", bidder.url())]));
    test_support::auctions::create(&redis.url(), &["traced".into()], 600_000).await;
    let http = reqwest::Client::new();

    // One client on each edge, waiting for the bid.
    let response = http
        .get(format!("{}/auctions/traced/events", sse.url()))
        .send()
        .await
        .unwrap();
    let mut sse_events = response.bytes_stream().eventsource();
    assert_eq!(sse_events.next().await.unwrap().unwrap().event, "init");
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", ws.addr))
        .await
        .unwrap();
    socket
        .send(r#"{"type":"subscribe","auction":"traced"}"#.into())
        .await
        .unwrap();
    let init = socket.next().await.unwrap().unwrap();
    assert!(init.to_text().unwrap().contains("\"type\":\"init\""));

    let placed = http
        .post(format!("{}/auctions/traced/bids", bidder.url()))
        .bearer_auth(test_support::seller_token())
        .header("content-type", "application/json")
        .body(r#"{"amount":100,"bidder":"tracer"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status(), 201);
    let deadline = Duration::from_secs(10);
    let event = tokio::time::timeout(deadline, sse_events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.event, "bid");
    let message = tokio::time::timeout(deadline, socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(message.to_text().unwrap().contains("\"type\":\"bid\""));

    // Wait for the exporters' batches.
    let find = |service: &str, name: &str| {
        spans
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.0 == service && s.1 == name)
            .cloned()
    };
    let started = std::time::Instant::now();
    while (find("sse-edge", "fanout.publish").is_none()
        || find("ws-edge", "fanout.publish").is_none()
        || find("bidder", "redis.place_bid").is_none())
        && started.elapsed() < Duration::from_secs(15)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let post = find("bidder", "POST /auctions/{id}/bids").expect("the POST span");
    let append = find("bidder", "redis.place_bid").expect("the Redis append span");
    let sse_fanout = find("sse-edge", "fanout.publish").expect("the SSE edge's fan-out span");
    let ws_fanout = find("ws-edge", "fanout.publish").expect("the WebSocket edge's fan-out span");
    assert_eq!(append.4, post.3, "the append is a child of the POST");
    for fanout in [&sse_fanout, &ws_fanout] {
        assert_eq!(
            fanout.2, post.2,
            "same trace id across processes: {fanout:?}"
        );
        assert_eq!(fanout.4, append.3, "the fan-out continues from the append");
        assert_eq!(fanout.5, vec![append.3.clone()], "and links to it");
    }
}

/// A JSON log line logged while serving a traced request carries that
/// request's `trace_id` (and its span's `span_id`), so a log line leads to
/// its trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_carry_the_trace_id_of_their_request() {
    let (otlp, _spans) = receiver().await;
    let redis = RedisServer::start();
    let mut env = test_support::bidder_env(&redis, "", 1000);
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", otlp));
    env.push(("AUCTION_LOG_FORMAT", "json".into()));
    let bidder = ServiceProcess::start("bidder", &env);
    test_support::auctions::create(&redis.url(), &["logged".into()], 600_000).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let closed = reqwest::Client::new()
        .post(format!("{}/admin/auctions/logged/close", bidder.url()))
        .bearer_auth(test_support::admin_token("Ops"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(closed.status(), 200);
    let line = test_support::wait_for("the action's log line", Duration::from_secs(10), || {
        bidder
            .logs()
            .lines()
            .find(|line| line.contains("admin action"))
            .map(str::to_owned)
    });
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(json["trace_id"], trace_id, "{line}");
    assert_eq!(json["span_id"].as_str().map(str::len), Some(16), "{line}");
    assert_eq!(json["auction"], "logged", "{line}");
}
