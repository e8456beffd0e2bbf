// A client whose request body type the layers cannot rebuild for a second attempt.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use genesys_tower::retry::{RetryLayer, RetryPolicy};
use http::{Request, Response};
use http_body::Frame;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt, service_fn};

/// A streaming body of the application's own, with no way to build it from bytes.
struct UploadBody;

impl http_body::Body for UploadBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(None)
    }
}

#[tokio::main]
async fn main() {
    let client = service_fn(|_req: Request<UploadBody>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    });
    // The stack as an application names it: a boxed service of its own request type.
    let client: BoxCloneSyncService<Request<UploadBody>, Response<String>, genesys_tower::BoxError> =
        BoxCloneSyncService::new(
            ServiceBuilder::new()
                .layer(RetryLayer::new(RetryPolicy::default()))
                .service(client),
        );
    let _ = client.oneshot(Request::new(UploadBody)).await;
}
