//! The web page's routes, merged at `/` by [`crate::serve::router`]. Empty here: the
//! page (plain HTML, CSS and JavaScript embedded in the binary) lives in this folder.

use super::AppState;

/// The page's routes; the OpenAI routes live in [`crate::serve`].
pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
}
