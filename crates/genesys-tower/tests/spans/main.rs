//! The retry layer's spans: one per logical call, a child per attempt, with the fields an
//! operator looks for, and no secret anywhere. A test binary of its own, so that no other test
//! registers the span call sites first.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use genesys_tower::auth::{AuthLayer, Token, token_source_fn};
use genesys_tower::metrics::Route;
use genesys_tower::retry::{Jitter, RetryLayer, RetryPolicy};
use genesys_tower::{Body, BoxError};
use http::{Request, Response, StatusCode};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

#[derive(Debug, Clone)]
struct Span {
    id: u64,
    parent: Option<u64>,
    name: &'static str,
    fields: BTreeMap<String, String>,
}

/// Every span with its fields, and every event's text.
#[derive(Clone, Default)]
struct Capture {
    spans: Arc<Mutex<Vec<Span>>>,
    events: Arc<Mutex<Vec<String>>>,
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let parent = attrs
            .parent()
            .cloned()
            .or_else(|| {
                attrs
                    .is_contextual()
                    .then(|| ctx.current_span().id().cloned())
                    .flatten()
            })
            .map(|p| p.into_u64());
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.spans.lock().unwrap().push(Span {
            id: id.into_u64(),
            parent,
            name: attrs.metadata().name(),
            fields,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut spans = self.spans.lock().unwrap();
        if let Some(span) = spans.iter_mut().find(|s| s.id == id.into_u64()) {
            values.record(&mut Fields(&mut span.fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.events.lock().unwrap().push(format!("{fields:?}"));
    }
}

#[tokio::test(start_paused = true)]
async fn one_call_span_with_an_attempt_span_per_attempt_and_no_secret() {
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));

    let fetches = Arc::new(AtomicU32::new(0));
    let source = {
        let fetches = fetches.clone();
        token_source_fn(move || {
            let i = fetches.fetch_add(1, Ordering::SeqCst);
            async move {
                Ok::<_, BoxError>(Token::new(
                    format!("s3cr3t-token-{i}"),
                    Some(Duration::from_secs(3600)),
                ))
            }
        })
    };
    // Attempt 1: 503. Attempt 2: a 401 (the auth layer refreshes the token and sends again),
    // then 503. Attempt 3: 200. Each answer carries its correlation id.
    let calls = Arc::new(AtomicU32::new(0));
    let server = {
        let calls = calls.clone();
        service_fn(move |_req: Request<Body>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let (status, id) =
                [(503, "c-1"), (401, "c-401"), (503, "c-2"), (200, "c-3")][n.min(3) as usize];
            async move {
                Ok::<_, BoxError>(
                    Response::builder()
                        .status(status)
                        .header("inin-correlation-id", id)
                        .body(String::new())
                        .unwrap(),
                )
            }
        })
    };
    let policy = RetryPolicy::builder()
        .jitter(Jitter::None)
        .retry_after_spread(0.0, Duration::ZERO)
        .no_budget()
        .version("v7")
        .build();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .layer(AuthLayer::new(source))
        .service(server);
    let mut request = Request::patch("http://api.test/api/v2/users/42")
        .header("idempotency-key", "key-123")
        .body(Body::from(r#"{"name":"x"}"#))
        .unwrap();
    request
        .extensions_mut()
        .insert(Route::new("/api/v2/users/{id}"));
    let res = svc.oneshot(request).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    let spans = capture.spans.lock().unwrap().clone();
    let calls: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "http.client.call")
        .collect();
    assert_eq!(calls.len(), 1, "{spans:#?}");
    let call = calls[0];
    for (field, value) in [
        ("otel.name", "PATCH /api/v2/users/{id}"),
        ("otel.kind", "client"),
        ("http.request.method", "PATCH"),
        ("url.template", "/api/v2/users/{id}"),
        ("server.address", "api.test"),
        ("idempotency_key", "key-123"),
        ("retry.policy_version", "v7"),
        ("outcome", "2xx"),
        ("http.response.status_code", "200"),
        ("attempts", "3"),
        ("waited_ms", "1500"),
    ] {
        assert_eq!(
            call.fields.get(field).map(String::as_str),
            Some(value),
            "call span field {field}: {call:#?}"
        );
    }
    assert!(!call.fields.contains_key("error.type"), "{call:#?}");

    let attempts: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "http.client.attempt")
        .collect();
    assert_eq!(attempts.len(), 3, "{spans:#?}");
    let expected = [
        ("1", "503", "c-1", Some(("server_error", "500")), None),
        (
            "2",
            "503",
            "c-2",
            Some(("server_error", "1000")),
            Some("true"),
        ),
        ("3", "200", "c-3", None, None),
    ];
    for (span, (number, status, correlation, retry, refreshed)) in attempts.iter().zip(expected) {
        assert_eq!(
            span.parent,
            Some(call.id),
            "a child of the call span: {span:#?}"
        );
        let field = |name: &str| span.fields.get(name).map(String::as_str);
        assert_eq!(field("attempt"), Some(number), "{span:#?}");
        assert_eq!(
            field("http.response.status_code"),
            Some(status),
            "{span:#?}"
        );
        assert_eq!(field("inin.correlation_id"), Some(correlation), "{span:#?}");
        assert_eq!(field("retry.reason"), retry.map(|r| r.0), "{span:#?}");
        assert_eq!(field("retry.delay_ms"), retry.map(|r| r.1), "{span:#?}");
        assert_eq!(field("auth.token_refreshed"), refreshed, "{span:#?}");
    }

    let everything = format!("{spans:?}{:?}", capture.events.lock().unwrap());
    assert!(
        !everything.contains("s3cr3t") && !everything.to_lowercase().contains("bearer"),
        "a token reached a span or an event: {everything}"
    );
}
