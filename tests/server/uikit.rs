//! A browser of the web UI for the HTTP-level page tests: the session cookie of a signed-in
//! user, redirects not followed (a test reads each 303 and its `Location`).

use crate::harness::Api;

pub struct Browser {
    base: String,
    http: reqwest::Client,
    cookie: String,
}

pub struct Page {
    pub status: u16,
    /// The `Location` of a redirect; empty otherwise.
    pub location: String,
    pub html: String,
}

impl Browser {
    pub fn of(api: &Api) -> Browser {
        Browser {
            base: api.base.clone(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                // A page that hangs fails its test instead of holding up the whole run.
                .timeout(std::time::Duration::from_secs(90))
                .build()
                .unwrap(),
            cookie: format!("sc_session={}", api.token.as_deref().unwrap()),
        }
    }

    async fn answer(&self, rb: reqwest::RequestBuilder) -> Page {
        let res = rb.header("cookie", &self.cookie).send().await.unwrap();
        let status = res.status().as_u16();
        let location = res
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        Page {
            status,
            location,
            html: res.text().await.unwrap(),
        }
    }

    pub async fn get(&self, path: &str) -> Page {
        self.answer(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        self.answer(self.http.post(format!("{}{path}", self.base)).form(form))
            .await
    }

    /// The CSRF token the pages of this session carry.
    pub async fn csrf(&self) -> String {
        let page = self.get("/ui/tasks/new").await;
        assert_eq!(page.status, 200, "{}", page.html);
        csrf(&page.html)
    }
}

/// The value of the first `attr="..."` after `marker` in `html` (entities as the template
/// escaped them).
pub fn attr_after(html: &str, marker: &str, attr: &str) -> String {
    let at = html
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker:?} in the page"));
    let rest = &html[at..];
    let key = format!("{attr}=\"");
    let start = rest.find(&key).unwrap() + key.len();
    let end = rest[start..].find('"').unwrap();
    rest[start..start + end].to_string()
}

/// A page's CSRF token, from its meta tag.
pub fn csrf(html: &str) -> String {
    attr_after(html, "name=\"csrf-token\"", "content")
}
