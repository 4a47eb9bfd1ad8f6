//! Static files of the UI (style sheets, script modules, icons), compiled into the binary.

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(rust_embed::Embed)]
#[folder = "ui/static/"]
struct Static;

/// The content type of a static file, by extension; anything else is not served.
fn content_type(name: &str) -> Option<&'static str> {
    let ext = name.rsplit_once('.')?.1;
    Some(match ext {
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        _ => return None,
    })
}

/// `GET /ui/static/{file}`: the file with its SHA-256 as ETag; revalidated on every use, so a
/// new binary's files are picked up at once.
pub async fn serve(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let (Some(kind), Some(f)) = (content_type(&file), Static::get(&file)) else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    let etag = format!("\"{}\"", hex::encode(f.metadata.sha256_hash()));
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == etag)
    {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let mut res = f.data.into_owned().into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    res
}

/// Every static file's name (tests check each is served and referenced files exist).
pub fn names() -> Vec<String> {
    Static::iter().map(|n| n.into_owned()).collect()
}

/// Is there a static file of this name?
pub fn exists(name: &str) -> bool {
    Static::get(name).is_some()
}

/// A static file's text (tests read the scripts).
pub fn text(name: &str) -> Option<String> {
    Static::get(name).and_then(|f| String::from_utf8(f.data.into_owned()).ok())
}
