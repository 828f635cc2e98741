//! The built web client: static files from the web root, with the single-page-app fallback
//! (any unknown path gets `index.html`, the client's router takes over) and a plain page
//! when the client has not been built.

use std::path::{Path, PathBuf};

use axum::handler::HandlerWithoutStateExt;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::services::ServeDir;

/// Routes serving `web_root`; meant as the relay router's fallback.
pub fn router(web_root: PathBuf) -> Router {
    let index = web_root.join("index.html");
    let spa = (move || {
        let index = index.clone();
        async move { index_page(&index).await }
    })
    .into_service();
    Router::new().fallback_service(ServeDir::new(web_root).fallback(spa))
}

async fn index_page(index: &Path) -> Response {
    match tokio::fs::read(index).await {
        Ok(body) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response(),
        Err(e) => {
            tracing::debug!(path = %index.display(), error = %e, "web client not found");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                NOT_BUILT,
            )
                .into_response()
        }
    }
}

const NOT_BUILT: &str = "<!doctype html>
<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Peermail relay</title></head>
<body>
<h1>The Peermail web client is not built</h1>
<p>This relay is running, but its web root has no <code>index.html</code>.
Build the client with <code>cargo xtask serve</code> (or <code>trunk build --release</code>),
or point the relay at the built files with <code>--web-root</code> / <code>PEERMAIL_WEB_ROOT</code>.</p>
</body></html>
";
