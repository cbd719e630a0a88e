//! The web console for auditors, analysts and clients (`/console`, issue 19): static
//! assets compiled into the binary, so it works offline and needs no build step. The page
//! talks to the same JSON API with the bearer token the user pastes; it holds no secret
//! of the server's and every answer it shows is the API's own.

use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::problem::AppError;

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: Asset = Asset {
    path: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("../../console/index.html"),
};

const ASSETS: &[Asset] = &[
    Asset {
        path: "console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../console/console.js"),
    },
    Asset {
        path: "console.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../console/console.css"),
    },
    Asset {
        path: "vendor/uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../console/vendor/uPlot.iife.min.js"),
    },
    Asset {
        path: "vendor/uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../console/vendor/uPlot.min.css"),
    },
    Asset {
        path: "vendor/LICENSE-uPlot",
        content_type: "text/plain; charset=utf-8",
        body: include_bytes!("../../console/vendor/LICENSE-uPlot"),
    },
];

/// Nothing but this origin's own files and API; no inline script or style, no framing.
const POLICY: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
     script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'self'";

fn serve(asset: &Asset) -> Response {
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Revalidated on every load: a new binary brings new files under the same names.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The console's page.
pub async fn index() -> Response {
    serve(&INDEX)
}

/// The console's scripts, styles and vendored chart library.
pub async fn asset(Path(path): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.path == path) {
        Some(asset) => serve(asset),
        None => AppError::not_found().into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The feed names each SSE event after its event type and `EventSource` needs a
    /// listener per name: the live view must know every type the domain emits.
    #[test]
    fn the_live_view_listens_for_every_event_type() {
        let script = ASSETS.iter().find(|a| a.path == "console.js").unwrap();
        let script = std::str::from_utf8(script.body).unwrap();
        let sources = [
            include_str!("../../../domain/src/account.rs"),
            include_str!("../../../domain/src/booking.rs"),
            include_str!("../../../domain/src/payment.rs"),
            include_str!("../../../domain/src/subscription.rs"),
            include_str!("../../../domain/src/subject.rs"),
        ];
        let mut names = 0;
        for source in sources {
            let (_, from) = source.split_once("fn event_type(&self)").unwrap();
            // Up to the end of the function (its closing brace, at the impl's indent).
            let (arms, _) = from.split_once("\n    }\n").unwrap();
            for name in arms.split('"').skip(1).step_by(2) {
                names += 1;
                assert!(
                    script.contains(&format!("'{name}'")),
                    "console.js does not listen for {name}"
                );
            }
        }
        assert!(names > 20, "found only {names} event types");
    }

    #[test]
    fn the_page_names_only_embedded_files() {
        let page = std::str::from_utf8(INDEX.body).unwrap();
        for reference in page
            .split(['"', '\''])
            .filter(|s| s.starts_with("/console/"))
        {
            let path = reference.trim_start_matches("/console/");
            assert!(
                ASSETS.iter().any(|a| a.path == path),
                "the page refers to {reference}, which is not embedded"
            );
        }
        assert!(
            !page.contains("<script>"),
            "no inline script (the policy forbids it)"
        );
        assert!(
            !page.contains(" style="),
            "no inline style (the policy forbids it)"
        );
        assert!(
            !page.contains("http://") && !page.contains("https://"),
            "nothing from elsewhere"
        );
    }
}
